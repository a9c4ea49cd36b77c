//! The `fareway.v1` protobuf messages and gRPC services, generated at build time.
//!
//! Only the engine's `grpc` boundary module and clients (the simulator, tests) use these
//! types; the engine's domain modules never see them.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("fareway.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fareway_descriptor");
