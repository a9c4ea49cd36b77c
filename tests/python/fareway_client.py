"""A Fareway client written the way another vendor's gate or finance software would: Python
with grpcio, its stubs generated at run time from the project's own .proto files.

Usage: fareway_client.py INPUT.json   (tests/python_client.rs writes the input)

It checks health, sends a tap without a token and then with the gate token (twice, the
second a retry with the same transaction id), closes settlement batches with the finance
token and pulls each one, writing the file it received to the output folder. It prints one
JSON object with everything it saw; the Rust test compares it with the engine's truth.
"""

import hashlib
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc


def generate_stubs(proto_root, out):
    files = [
        os.path.join("fareway", "v1", name)
        for name in sorted(os.listdir(os.path.join(proto_root, "fareway", "v1")))
        if name.endswith(".proto")
    ]
    status = protoc.main(
        ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    sys.path.insert(0, out)


def services_by_reflection_v1(channel):
    """The services server reflection v1 lists. grpcio-reflection ships only v1alpha's
    messages; v1's are the same on the wire, under another package name."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return sorted(s.name for answer in answers for s in answer.list_services_response.service)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        given = json.load(f)
    stubs = tempfile.mkdtemp(prefix="fareway-stubs-")
    generate_stubs(given["proto_root"], stubs)
    from fareway.v1 import gate_pb2, gate_pb2_grpc, settlement_pb2, settlement_pb2_grpc, token_pb2

    seen = {}
    with grpc.insecure_channel(given["server"]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        seen["health"] = {
            service: health_pb2.HealthCheckResponse.ServingStatus.Name(
                health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            )
            for service in ["", "fareway.v1.GateService", "fareway.v1.SettlementService"]
        }

        # Reflection as Python's own client asks it (v1alpha), and as v1.
        database = ProtoReflectionDescriptorDatabase(channel)
        seen["reflection"] = {
            "v1alpha": sorted(database.get_services()),
            "v1": services_by_reflection_v1(channel),
            "gate_methods": [
                method.name
                for method in database.FindFileContainingSymbol(
                    "fareway.v1.GateService"
                ).service[0].method
            ],
        }

        tap = given["tap"]
        request = gate_pb2.TapRequest(
            transaction_id=bytes.fromhex(tap["transaction_id_hex"]),
            gate_id=tap["gate_id"],
            direction=gate_pb2.Direction.Value(tap["direction"]),
            route_id=tap["route_id"],
            scan_time_ms=tap["scan_time_ms"],
            code=token_pb2.ScannedCode(text=tap["code"]),
        )
        gate = gate_pb2_grpc.GateServiceStub(channel)
        try:
            gate.Tap(request, timeout=10)
            seen["tap_without_token"] = "OK"
        except grpc.RpcError as err:
            seen["tap_without_token"] = err.code().name
        gate_auth = [("authorization", "Bearer " + given["gate_token"])]
        answers = []
        for _ in range(2):
            answer = gate.Tap(request, metadata=gate_auth, timeout=10)
            answers.append(
                {
                    "decision": gate_pb2.TapDecision.Name(answer.decision),
                    "fare_minor": answer.fare_minor,
                    "balance_after_minor": answer.balance_after_minor,
                    "replay": answer.replay,
                    "transaction_id_hex": answer.transaction_id.hex(),
                }
            )
        seen["taps"] = answers

        finance = settlement_pb2_grpc.SettlementServiceStub(channel)
        finance_auth = [("authorization", "Bearer " + given["finance_token"])]
        closed = finance.CloseBatches(
            settlement_pb2.CloseBatchesRequest(close_id=bytes.fromhex(given["close_id_hex"])),
            metadata=finance_auth,
            timeout=30,
        )
        pulled = []
        for batch in closed.batches:
            manifest = None
            data = bytearray()
            for chunk in finance.PullBatch(
                settlement_pb2.PullBatchRequest(batch_id=batch.batch_id),
                metadata=finance_auth,
                timeout=60,
            ):
                part = chunk.WhichOneof("part")
                if part == "manifest":
                    manifest = json.loads(chunk.manifest)
                elif part == "file_data":
                    data += chunk.file_data
            path = os.path.join(given["out"], batch.file_name)
            with open(path, "wb") as f:
                f.write(data)
            pulled.append(
                {
                    "batch_id": batch.batch_id,
                    "provider_id": batch.provider_id,
                    "line_count": batch.line_count,
                    "net_minor": batch.net_minor,
                    "file": path,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "sha256_from_close": batch.file_sha256.hex(),
                    "manifest": manifest,
                }
            )
        seen["batches"] = pulled
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
