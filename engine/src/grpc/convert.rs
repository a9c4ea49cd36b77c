//! Conversion between the `fareway.v1` messages and the domain's types, written by hand,
//! and the mapping of domain errors to gRPC statuses. A malformed field is
//! `INVALID_ARGUMENT` naming the field.

use fareway_proto::v1 as pb;
use tonic::Status;

use crate::clock::UnixMillis;
use crate::gate::upload::{OfflineTapInput, UploadAnswer, UploadStatus};
use crate::gate::{GateError, TapAnswer, TapInput, TapReason};
use crate::ledger::{LedgerError, Refusal, TapKind, TxId};
use crate::token::Reason;

/// The metadata key that carries an error's stable code string.
pub const ERROR_CODE_METADATA: &str = "fareway-error-code";

/// A status with the error's stable code in the metadata, for clients to match.
pub fn status(code: tonic::Code, message: String, error_code: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(error_code),
    );
    status
}

/// `INVALID_ARGUMENT` naming the field.
pub fn invalid(field: &str, problem: &str) -> Status {
    status(
        tonic::Code::InvalidArgument,
        format!("{field}: {problem}"),
        "invalid_argument",
    )
}

/// A ledger fault as a status.
pub fn ledger_status(err: &LedgerError) -> Status {
    use tonic::Code;
    if let LedgerError::Remote { code, message } = err {
        return remote_status(code, message);
    }
    let code = match err {
        LedgerError::Overloaded(_) => Code::ResourceExhausted,
        LedgerError::Conflict { .. } => Code::AlreadyExists,
        LedgerError::Closed | LedgerError::Storage(_) | LedgerError::Unavailable(_) => {
            Code::Unavailable
        }
        LedgerError::NoFares => Code::FailedPrecondition,
        LedgerError::Open { .. }
        | LedgerError::NoLedger { .. }
        | LedgerError::UnknownFormat { .. }
        | LedgerError::WrongShard { .. }
        | LedgerError::FormatVersion { .. }
        | LedgerError::MissingColumnFamily(_)
        | LedgerError::Corrupt { .. }
        | LedgerError::Invariant(_)
        | LedgerError::Remote { .. } => Code::Internal,
    };
    status(code, err.to_string(), err.code())
}

/// The status of an error a shard's leader answered a forwarded command with: the same
/// status the leader's own node would have given, from the error's stable code.
fn remote_status(code: &str, message: &str) -> Status {
    use tonic::Code;
    let (grpc_code, stable_code) = match code {
        "overloaded" => (Code::ResourceExhausted, "overloaded"),
        "id_conflict" => (Code::AlreadyExists, "id_conflict"),
        "closed" | "storage" | "unavailable" => (Code::Unavailable, "unavailable"),
        "no_fares" => (Code::FailedPrecondition, "no_fares"),
        _ => (Code::Internal, "remote"),
    };
    status(grpc_code, message.to_string(), stable_code)
}

/// A gate fault as a status.
pub fn gate_status(err: &GateError) -> Status {
    match err {
        GateError::Invalid { field, problem } => invalid(field, problem),
        GateError::Ledger(err) => ledger_status(err),
    }
}

/// A 16-byte transaction id.
pub fn tx_id(bytes: &[u8], field: &str) -> Result<TxId, Status> {
    let array: [u8; 16] = bytes.try_into().map_err(|_| {
        invalid(
            field,
            &format!("must be exactly 16 bytes, got {}", bytes.len()),
        )
    })?;
    Ok(TxId(u128::from_be_bytes(array)))
}

/// A tap request as the domain's input.
pub fn tap_input(request: pb::TapRequest) -> Result<TapInput, Status> {
    let id = tx_id(&request.transaction_id, "transaction_id")?;
    let nonzero = |value: u32, field: &str| {
        if value == 0 {
            Err(invalid(field, "must be set (non-zero) for this direction"))
        } else {
            Ok(value)
        }
    };
    let kind = match pb::Direction::try_from(request.direction) {
        Ok(pb::Direction::Entry) => TapKind::MetroEntry {
            station: nonzero(request.station_id, "station_id")?,
        },
        Ok(pb::Direction::Exit) => TapKind::MetroExit {
            station: nonzero(request.station_id, "station_id")?,
        },
        Ok(pb::Direction::Bus) => TapKind::Bus {
            route: nonzero(request.route_id, "route_id")?,
        },
        Ok(pb::Direction::Unspecified) | Err(_) => {
            return Err(invalid("direction", "must be ENTRY, EXIT or BUS"));
        }
    };
    if request.scan_time_ms == 0 {
        return Err(invalid("scan_time_ms", "must be set"));
    }
    let code = request.code.ok_or_else(|| invalid("code", "is missing"))?;
    Ok(TapInput {
        id,
        gate_id: request.gate_id,
        kind,
        scan_time: UnixMillis(request.scan_time_ms),
        code_text: code.text,
    })
}

/// An upload's taps as the domain's input, each, or the answer to a malformed one:
/// `REJECTED` with `invalid_argument` naming the field, recorded nowhere (final: a gate
/// must not keep uploading a tap it could not have made).
pub fn offline_taps(
    request: pb::UploadOfflineTapsRequest,
) -> Vec<Result<OfflineTapInput, pb::OfflineTapResult>> {
    request
        .taps
        .into_iter()
        .map(|offline| {
            let transaction_id = offline
                .tap
                .as_ref()
                .map(|tap| tap.transaction_id.clone())
                .unwrap_or_default();
            let malformed = |status: Status| pb::OfflineTapResult {
                transaction_id: transaction_id.clone(),
                status: pb::OfflineTapStatus::Rejected as i32,
                reason_code: "invalid_argument".into(),
                message: status.message().to_string(),
                ..pb::OfflineTapResult::default()
            };
            let tap = offline
                .tap
                .ok_or_else(|| malformed(invalid("tap", "is missing")))?;
            let tap = tap_input(tap).map_err(malformed)?;
            Ok(OfflineTapInput {
                tap,
                opened: offline.opened,
            })
        })
        .collect()
}

/// An uploaded tap's answer as the API's result.
pub fn offline_tap_result(answer: &UploadAnswer) -> pb::OfflineTapResult {
    let status = match answer.status {
        UploadStatus::Charged => pb::OfflineTapStatus::Charged,
        UploadStatus::Corrected => pb::OfflineTapStatus::Corrected,
        UploadStatus::Duplicate => pb::OfflineTapStatus::Duplicate,
        UploadStatus::Rejected => pb::OfflineTapStatus::Rejected,
        UploadStatus::Retry => pb::OfflineTapStatus::Retry,
    };
    pb::OfflineTapResult {
        transaction_id: answer.id.0.to_be_bytes().to_vec(),
        status: status as i32,
        reason_code: answer.reason.unwrap_or_default().to_string(),
        message: answer.message.clone().unwrap_or_default(),
        fare_minor: answer.fare.0,
        corrections: answer.corrections,
        balance_after_minor: answer.balance_after.map(|balance| balance.0),
    }
}

/// The domain's answer as a tap response.
pub fn tap_response(answer: &TapAnswer) -> pb::TapResponse {
    let decision = if answer.accepted {
        pb::TapDecision::Accepted
    } else {
        pb::TapDecision::Rejected
    };
    pb::TapResponse {
        transaction_id: answer.id.0.to_be_bytes().to_vec(),
        decision: decision as i32,
        reason: answer.reason.map_or(pb::TapReason::Unspecified, tap_reason) as i32,
        reason_code: answer
            .reason
            .map(|reason| reason.code().to_string())
            .unwrap_or_default(),
        fare_minor: answer.fare.0,
        balance_after_minor: answer.balance_after.map(|balance| balance.0),
        journey_id: answer.journey_id.unwrap_or(0),
        replay: answer.replay,
        error: None,
    }
}

/// A fault on one tap of a stream, as that tap's answer.
pub fn tap_error(transaction_id: Vec<u8>, status: &Status) -> pb::TapResponse {
    pb::TapResponse {
        transaction_id,
        error: Some(pb::TapError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
        ..pb::TapResponse::default()
    }
}

/// The API's reason for a domain reason. Ledger refusals that a tap cannot get map to
/// `UNSPECIFIED`; `reason_code` still names them.
pub fn tap_reason(reason: TapReason) -> pb::TapReason {
    use pb::TapReason as P;
    match reason {
        TapReason::Code(reason) => match reason {
            Reason::TooLong => P::CodeTooLong,
            Reason::BadEncoding => P::CodeBadEncoding,
            Reason::UnsupportedVersion => P::CodeUnsupportedVersion,
            Reason::Truncated => P::CodeTruncated,
            Reason::TrailingBytes => P::CodeTrailingBytes,
            Reason::UnknownIssuerKey => P::UnknownIssuerKey,
            Reason::RevokedIssuerKey => P::RevokedIssuerKey,
            Reason::BadCredentialSignature => P::BadCredentialSignature,
            Reason::CredentialExpired => P::CredentialExpired,
            Reason::WeakDeviceKey => P::WeakDeviceKey,
            Reason::BadCodeSignature => P::BadCodeSignature,
            Reason::CodeExpired => P::CodeExpired,
            Reason::CodeFromFuture => P::CodeFromFuture,
            Reason::AccountDenied => P::AccountDenied,
        },
        TapReason::Ledger(refusal) => match refusal {
            Refusal::AccountDenied => P::AccountDenied,
            Refusal::UnknownAccount => P::UnknownAccount,
            Refusal::AccountClosed => P::AccountClosed,
            Refusal::CreditLimitExceeded => P::CreditLimitExceeded,
            Refusal::UnknownStation => P::UnknownStation,
            Refusal::UnknownRoute => P::UnknownRoute,
            Refusal::CodeReused => P::CodeReused,
            Refusal::BalanceOverflow => P::BalanceOverflow,
            Refusal::AccountExists
            | Refusal::InvalidAmount
            | Refusal::UnknownOriginal
            | Refusal::NotRefundable
            | Refusal::AlreadyRefunded
            | Refusal::BalanceNotZero
            | Refusal::JourneyNotOpen
            | Refusal::JourneyNotExpired => P::Unspecified,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> pb::TapRequest {
        pb::TapRequest {
            transaction_id: vec![7; 16],
            gate_id: 3,
            direction: pb::Direction::Entry as i32,
            station_id: 101,
            route_id: 0,
            scan_time_ms: 1_800_000_000_000,
            code: Some(pb::ScannedCode { text: "ABC".into() }),
        }
    }

    fn field_of(status: Status) -> String {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status
            .message()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_valid_request_converts_and_each_bad_field_is_named() {
        let input = tap_input(valid()).unwrap();
        assert_eq!(input.kind, TapKind::MetroEntry { station: 101 });
        assert_eq!(input.id, TxId(u128::from_be_bytes([7; 16])));
        type Spoil = fn(&mut pb::TapRequest);
        let cases: [(Spoil, &str); 6] = [
            (|r| r.transaction_id = vec![1; 15], "transaction_id"),
            (|r| r.direction = 0, "direction"),
            (|r| r.direction = 99, "direction"),
            (|r| r.station_id = 0, "station_id"),
            (
                |r| {
                    r.direction = pb::Direction::Bus as i32;
                },
                "route_id",
            ),
            (|r| r.code = None, "code"),
        ];
        for (spoil, field) in cases {
            let mut request = valid();
            spoil(&mut request);
            assert_eq!(field_of(tap_input(request).unwrap_err()), field);
        }
    }

    #[test]
    fn ledger_faults_map_to_their_status_codes() {
        use tonic::Code;
        let cases = [
            (LedgerError::Overloaded(5), Code::ResourceExhausted),
            (
                LedgerError::Conflict {
                    id: TxId(1),
                    field: "gate_id",
                },
                Code::AlreadyExists,
            ),
            (LedgerError::Closed, Code::Unavailable),
            (LedgerError::NoFares, Code::FailedPrecondition),
            (LedgerError::Invariant("x".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = ledger_status(&err);
            assert_eq!(status.code(), code, "{err}");
            assert_eq!(
                status.metadata().get(ERROR_CODE_METADATA).unwrap(),
                err.code()
            );
        }
    }

    #[test]
    fn a_leaders_error_keeps_its_status_across_the_hop() {
        use tonic::Code;
        let remote = |code: &str| LedgerError::Remote {
            code: code.into(),
            message: format!("the leader said {code}"),
        };
        let cases = [
            ("overloaded", Code::ResourceExhausted, "overloaded"),
            ("id_conflict", Code::AlreadyExists, "id_conflict"),
            ("unavailable", Code::Unavailable, "unavailable"),
            ("storage", Code::Unavailable, "unavailable"),
            ("no_fares", Code::FailedPrecondition, "no_fares"),
            ("corrupt", Code::Internal, "remote"),
        ];
        for (code, status_code, stable) in cases {
            let status = ledger_status(&remote(code));
            assert_eq!(status.code(), status_code, "{code}");
            assert_eq!(status.message(), format!("the leader said {code}"));
            assert_eq!(status.metadata().get(ERROR_CODE_METADATA).unwrap(), stable);
        }
        let no_leader = ledger_status(&LedgerError::Unavailable(
            "shard 1 has no leader now".into(),
        ));
        assert_eq!(no_leader.code(), Code::Unavailable);
        assert_eq!(no_leader.message(), "shard 1 has no leader now");
    }
}
