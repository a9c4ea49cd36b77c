//! Any bytes as a protobuf `CloseBatchesRequest` (what finance sends): decoding and the
//! conversion answer a close request or `INVALID_ARGUMENT`, never a panic.
#![no_main]

use fareway::grpc::settlement::close_request;
use fareway_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = pb::CloseBatchesRequest::decode(data) else { return };
    if let Err(status) = close_request(&request) {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
});
