//! Any bytes as a protobuf `TapRequest` (what a gate sends): decoding and the conversion to
//! the gate service's input answer a value or `INVALID_ARGUMENT`, never a panic; a request
//! that converts keeps its id, gate and scan time.
#![no_main]

use fareway::grpc::convert::tap_input;
use fareway_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::TapRequest::decode(data) else { return };
    match tap_input(request.clone()) {
        Ok(input) => {
            assert_eq!(input.id.0.to_be_bytes().as_slice(), request.transaction_id.as_slice());
            assert_eq!(input.gate_id, request.gate_id);
            assert_eq!(input.scan_time.0, request.scan_time_ms);
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
    }
});
