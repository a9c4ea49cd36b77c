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
pub mod gate;
pub mod settlement;

use fareway_proto::v1 as pb;
use tonic::service::Routes;

use crate::server::config::Role;

/// Roles allowed to call the gate service.
pub const GATE_ROLES: &[Role] = &[Role::Gate];
/// Roles allowed to call the admin service.
pub const ADMIN_ROLES: &[Role] = &[Role::Admin];
/// Roles allowed to call the settlement service.
pub const SETTLEMENT_ROLES: &[Role] = &[Role::Finance];

/// Every service, with its role check, as tonic routes.
pub fn routes(
    gate: gate::GateApi,
    admin: admin::AdminApi,
    settlement: settlement::SettlementApi,
    authenticator: &auth::Authenticator,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Routes, tonic_reflection::server::Error> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fareway_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let gate = pb::gate_service_server::GateServiceServer::with_interceptor(
        gate,
        authenticator.require(GATE_ROLES),
    );
    let admin = pb::admin_service_server::AdminServiceServer::with_interceptor(
        admin,
        authenticator.require(ADMIN_ROLES),
    );
    let settlement = pb::settlement_service_server::SettlementServiceServer::with_interceptor(
        settlement,
        authenticator.require(SETTLEMENT_ROLES),
    );
    Ok(Routes::new(gate)
        .add_service(admin)
        .add_service(settlement)
        .add_service(health)
        .add_service(reflection))
}
