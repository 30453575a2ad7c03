"""A grpcurl-style client on an independent gRPC stack (grpcio, C core).

Like grpcurl, it knows nothing of notes.proto: it discovers the service
through server reflection, builds messages from the reflected descriptors,
speaks JSON, and authenticates with mutual TLS and a bearer token.

    python grpcurl_style.py ADDRESS CA_PEM CERT_PEM KEY_PEM TOKEN

Runs create, get, list, update and delete and prints one JSON line per call;
exits non-zero on any failure.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "notes.v1.NotesService"


def main() -> int:
    address, ca, cert, key, token = sys.argv[1:6]
    read = lambda path: open(path, "rb").read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    channel = grpc.secure_channel(address, credentials)
    # Reflection, as `grpcurl ... list` / `describe` does: no token needed.
    database = ProtoReflectionDescriptorDatabase(channel)
    services = list(database.get_services())
    assert SERVICE in services, services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE)
    metadata = [("authorization", f"Bearer {token}")]

    def call(method_name: str, body: dict) -> dict:
        method = service.methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        stub = channel.unary_unary(
            f"/{SERVICE}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        request = json_format.ParseDict(body, request_class())
        response = stub(request, metadata=metadata, timeout=10)
        out = json_format.MessageToDict(response)
        print(json.dumps({"method": method_name, "response": out}))
        return out

    created = call("CreateNote", {"content": "hello from grpcurl-style"})
    note_id = created["noteId"]
    assert created["version"] == "1", created
    assert call("GetNote", {"noteId": note_id})["content"] == "hello from grpcurl-style"
    listed = call("ListNotes", {"pageSize": 10})
    assert [n["noteId"] for n in listed["notes"]] == [note_id], listed
    updated = call("UpdateNote", {"noteId": note_id, "content": "edited", "expectedVersion": "1"})
    assert updated["version"] == "2" and updated["content"] == "edited", updated
    call("DeleteNote", {"noteId": note_id, "expectedVersion": "2"})
    try:
        call("GetNote", {"noteId": note_id})
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        print(json.dumps({"method": "GetNote", "status": err.code().name}))
    else:
        raise AssertionError("the deleted note is still there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
