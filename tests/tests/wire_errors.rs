//! Requests that never reach a handler still get answers in the client's terms: bytes that do
//! not decode as the method's request are INVALID_ARGUMENT `MESSAGE_UNDECODABLE`, a message
//! above the server's size limit is RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE`, on both services.

use bytes::{Buf as _, BufMut as _};
use tandem_tests::{RunningOrchestrator, RunningVault, orchestrator_reason, vault_reason};
use tandem_tls::identity::Role;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends and receives raw message bytes, whatever the method's types.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// A channel, a method, the raw body sent, and the code, reason and reason reader expected.
type Case = (
    Channel,
    &'static str,
    Vec<u8>,
    Code,
    &'static str,
    fn(&Status) -> String,
);

async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .expect_err("the server must refuse these bytes")
}

/// Undecodable and oversized requests on a vault and an orchestrator method each.
#[tokio::test]
async fn undecodable_and_oversized_requests_are_the_clients_errors() {
    let vault = RunningVault::start().await;
    let orchestrator = RunningOrchestrator::start(&vault).await;
    // A field tag with wire type 7, which protobuf does not have.
    let undecodable = vec![0x0f, 0x01];
    let vault_limit = vault.settings.server.message_bytes_max;
    let orchestrator_limit = orchestrator.settings.server.message_bytes_max;
    let cases: [Case; 4] = [
        (
            vault.channel(Role::Tokenizer).await,
            "/tandem.vault.v1.TokenService/GetToken",
            undecodable.clone(),
            Code::InvalidArgument,
            "MESSAGE_UNDECODABLE",
            vault_reason,
        ),
        (
            vault.channel(Role::Tokenizer).await,
            "/tandem.vault.v1.TokenService/GetToken",
            vec![0; vault_limit + 1],
            Code::ResourceExhausted,
            "MESSAGE_TOO_LARGE",
            vault_reason,
        ),
        (
            orchestrator.channel(Role::Reader).await,
            "/tandem.orchestrator.v1.PaymentService/GetPayment",
            undecodable,
            Code::InvalidArgument,
            "MESSAGE_UNDECODABLE",
            orchestrator_reason,
        ),
        (
            orchestrator.channel(Role::Reader).await,
            "/tandem.orchestrator.v1.PaymentService/GetPayment",
            vec![0; orchestrator_limit + 1],
            Code::ResourceExhausted,
            "MESSAGE_TOO_LARGE",
            orchestrator_reason,
        ),
    ];
    for (channel, path, body, code, reason, read_reason) in cases {
        let size = body.len();
        let status = raw_call(channel, path, body).await;
        assert_eq!(status.code(), code, "{path} with {size} bytes: {status:?}");
        assert_eq!(read_reason(&status), reason, "{path}");
    }
    orchestrator.stop().await;
    vault.stop().await;
}
