//! The `fareway.v1` protobuf messages and gRPC services, generated at build time.
//!
//! Only the engine's `grpc` boundary module and clients (the simulator, tests) use these
//! types; the engine's domain modules never see them.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("fareway.v1");
}

pub mod codec {
    //! The codec of every `fareway.v1` service: prost's encoding, with one change. A
    //! message that does not parse is answered `INVALID_ARGUMENT`, because the sender
    //! made it wrong; prost's own codec answers `INTERNAL`, which the gate API documents
    //! as a bug in the engine.

    use std::marker::PhantomData;

    use tonic::Status;
    use tonic::codec::{BufferSettings, DecodeBuf};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// Encodes `T` and decodes `U` with prost.
    #[derive(Debug, Clone)]
    pub struct Codec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Codec(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = Decoder<U>;

        fn encoder(&mut self) -> ProstEncoder<T> {
            ProstEncoder::default()
        }

        fn decoder(&mut self) -> Decoder<U> {
            Decoder(ProstDecoder::default())
        }
    }

    /// prost's decoder, with a parse failure as `INVALID_ARGUMENT`.
    #[derive(Debug, Clone)]
    pub struct Decoder<U>(ProstDecoder<U>);

    impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|status| {
                Status::invalid_argument(format!(
                    "the message does not parse as protobuf: {}",
                    status.message()
                ))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fareway_descriptor");
