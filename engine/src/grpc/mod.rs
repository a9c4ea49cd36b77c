//! The gRPC boundary: the only module that knows protobuf and tonic. It converts requests
//! into the domain's types (`convert`), checks the caller's role (`auth`), sheds excess
//! load, and maps domain errors to gRPC statuses.
//!
//! | service | roles |
//! | --- | --- |
//! | `fareway.v1.GateService` | gate |
//! | `fareway.v1.AdminService` | admin |
//! | `fareway.v1.SettlementService` | finance |
//! | `grpc.health.v1.Health`, server reflection | anyone (no token) |

pub mod admin;
pub mod auth;
pub mod convert;
pub mod ending;
pub mod gate;
pub mod refusals;
pub mod settlement;

use fareway_proto::v1 as pb;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use crate::server::config::Role;

/// Roles allowed to call the gate service.
pub const GATE_ROLES: &[Role] = &[Role::Gate];
/// Roles allowed to call the admin service.
pub const ADMIN_ROLES: &[Role] = &[Role::Admin];
/// Roles allowed to call the settlement service.
pub const SETTLEMENT_ROLES: &[Role] = &[Role::Finance];

/// Largest gate request a server decodes: a tap is under 1 KiB (its code's text is 294
/// characters); anything much larger is not a tap, and is refused before it is buffered.
pub const GATE_MESSAGE_BYTES_MAX: usize = 16 << 10;
/// Largest admin or settlement request: every one is a few fields.
pub const BACK_OFFICE_MESSAGE_BYTES_MAX: usize = 64 << 10;
/// Largest health or reflection request: a service or symbol name.
pub const PUBLIC_MESSAGE_BYTES_MAX: usize = 4 << 10;

/// Every service, with its role check and its request size limit, as tonic routes. The
/// role check runs on the headers, before any of the body is read. Without settlement
/// (cluster mode, for now), its calls are `UNIMPLEMENTED`.
pub fn routes(
    gate: gate::GateApi,
    admin: admin::AdminApi,
    settlement: Option<settlement::SettlementApi>,
    authenticator: &auth::Authenticator,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Routes, tonic_reflection::server::Error> {
    // Both versions of reflection, as grpc-go serves them: `v1alpha` is what Python's
    // grpcio-reflection and many older tools still ask.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let gate = InterceptedService::new(
        pb::gate_service_server::GateServiceServer::new(gate)
            .max_decoding_message_size(GATE_MESSAGE_BYTES_MAX),
        authenticator.require(GATE_ROLES),
    );
    let admin = InterceptedService::new(
        pb::admin_service_server::AdminServiceServer::new(admin)
            .max_decoding_message_size(BACK_OFFICE_MESSAGE_BYTES_MAX),
        authenticator.require(ADMIN_ROLES),
    );
    let mut routes = Routes::new(gate).add_service(admin);
    if let Some(settlement) = settlement {
        routes = routes.add_service(InterceptedService::new(
            pb::settlement_service_server::SettlementServiceServer::new(settlement)
                .max_decoding_message_size(BACK_OFFICE_MESSAGE_BYTES_MAX),
            authenticator.require(SETTLEMENT_ROLES),
        ));
    }
    Ok(routes
        .add_service(health.max_decoding_message_size(PUBLIC_MESSAGE_BYTES_MAX))
        .add_service(reflection_v1.max_decoding_message_size(PUBLIC_MESSAGE_BYTES_MAX))
        .add_service(reflection_v1alpha.max_decoding_message_size(PUBLIC_MESSAGE_BYTES_MAX)))
}

/// Server reflection over every service this server has.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fareway_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
