"""The wire contract is frozen: field numbers, types and enum values of talking_head.proto never change.

The .proto source is compiled afresh (protoc --descriptor_set_out) and compared with the literal tables
below. New fields/values may be added (append them here); renumbering, retyping or removing fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from eartalking.config import CONTROL_NAMES

PROTO = Path(__file__).resolve().parents[2] / "protos"

FIELDS: dict[str, list[tuple[str, int, str]]] = {
    "ControlValue": [("signal", 1, "enum"), ("value", 2, "float")],
    "SessionConfig": [("portrait", 1, "bytes"), ("sample_rate", 2, "uint32"), ("audio_encoding", 3, "enum"),
                      ("image_encoding", 4, "enum"), ("jpeg_quality", 5, "uint32"), ("crop_only", 6, "bool"),
                      ("temperature", 7, "float"), ("seed", 8, "uint64"), ("initial_controls", 9, "message")],
    "AudioChunk": [("pcm", 1, "bytes")],
    "ControlEvent": [("frame", 1, "uint64"), ("time_s", 2, "double"), ("next", 3, "bool"), ("signal", 4, "enum"),
                     ("value", 5, "float")],
    "EndOfAudio": [],
    "SessionRequest": [("config", 1, "message"), ("audio", 2, "message"), ("control", 3, "message"),
                       ("end", 4, "message")],
    "SessionHeader": [("width", 1, "uint32"), ("height", 2, "uint32"), ("fps", 3, "float"), ("model_id", 4, "string"),
                      ("lookahead_frames", 5, "uint32"), ("sample_rate", 6, "uint32"), ("session_id", 7, "string"),
                      ("image_encoding", 8, "enum")],
    "VideoFrame": [("index", 1, "uint64"), ("time_s", 2, "double"), ("image", 3, "bytes"), ("encoding", 4, "enum"),
                   ("width", 5, "uint32"), ("height", 6, "uint32"), ("controls", 7, "message")],
    "SessionStatus": [("frames", 1, "uint64"), ("code", 2, "int32"), ("message", 3, "string")],
    "SessionResponse": [("header", 1, "message"), ("frame", 2, "message"), ("status", 3, "message")],
    "ModelInfoRequest": [],
    "ControlRange": [("signal", 1, "enum"), ("min", 2, "float"), ("max", 3, "float")],
    "ModelInfo": [("model_id", 1, "string"), ("image_size", 2, "uint32"), ("fps", 3, "float"),
                  ("sample_rate", 4, "uint32"), ("lookahead_frames", 5, "uint32"), ("control_ranges", 6, "message"),
                  ("backend", 7, "string"), ("max_sessions", 8, "uint32"), ("live_sessions", 9, "uint32"),
                  ("max_portrait_bytes", 10, "uint64"), ("max_portrait_pixels", 11, "uint64"),
                  ("max_message_bytes", 12, "uint64"), ("idle_timeout_s", 13, "double"),
                  ("server_version", 14, "string")],
}
ENUMS: dict[str, list[tuple[str, int]]] = {
    "AudioEncoding": [("AUDIO_ENCODING_UNSPECIFIED", 0), ("AUDIO_ENCODING_PCM16", 1)],
    "ImageEncoding": [("IMAGE_ENCODING_UNSPECIFIED", 0), ("IMAGE_ENCODING_RAW_RGB", 1), ("IMAGE_ENCODING_PNG", 2),
                      ("IMAGE_ENCODING_JPEG", 3)],
    "ControlSignal": [("CONTROL_SIGNAL_UNSPECIFIED", 0), ("CONTROL_SIGNAL_YAW", 1), ("CONTROL_SIGNAL_PITCH", 2),
                      ("CONTROL_SIGNAL_ROLL", 3), ("CONTROL_SIGNAL_BLINK", 4), ("CONTROL_SIGNAL_EXPRESSION", 5)],
}
ONEOFS = {"SessionRequest": ("request", ["config", "audio", "control", "end"]),
          "SessionResponse": ("response", ["header", "frame", "status"]),
          "ControlEvent": ("target", ["frame", "time_s", "next"])}


@pytest.fixture(scope="module")
def fdesc(tmp_path_factory) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("desc") / "set.pb"
    rc = protoc.main(["protoc", f"-I{PROTO}", f"--descriptor_set_out={out}", "eartalking/v1/talking_head.proto"])
    assert rc == 0, "protoc failed on talking_head.proto"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (f,) = fds.file
    assert f.package == "eartalking.v1"
    return f


def _type_name(t: int) -> str:
    return descriptor_pb2.FieldDescriptorProto.Type.Name(t).removeprefix("TYPE_").lower()


def test_field_numbers_and_types_are_frozen(fdesc):
    msgs = {m.name: m for m in fdesc.message_type}
    for name, frozen in FIELDS.items():
        assert name in msgs, f"message {name} was removed"
        have = {f.name: (f.number, _type_name(f.type)) for f in msgs[name].field}
        for fname, number, ftype in frozen:
            now = have.get(fname)
            assert now == (number, ftype), f"{name}.{fname}: frozen ({number}, {ftype}), now {now}"
        numbers = [n for n, _ in have.values()]
        assert len(numbers) == len(set(numbers))


def test_enums_are_frozen_and_match_control_names(fdesc):
    enums = {e.name: {v.name: v.number for v in e.value} for e in fdesc.enum_type}
    for name, frozen in ENUMS.items():
        for vname, number in frozen:
            assert enums[name].get(vname) == number, f"{name}.{vname}"
    signals = sorted((n, v) for v, n in enums["ControlSignal"].items() if n)
    assert [v.removeprefix("CONTROL_SIGNAL_").lower() for _, v in signals] == list(CONTROL_NAMES)


def test_oneofs_and_service_shape(fdesc):
    msgs = {m.name: m for m in fdesc.message_type}
    for msg, (oneof, members) in ONEOFS.items():
        m = msgs[msg]
        names = [d.name for d in m.oneof_decl]
        assert oneof in names
        idx = names.index(oneof)
        assert [f.name for f in m.field if f.HasField("oneof_index") and f.oneof_index == idx] == members
    (svc,) = fdesc.service
    methods = {x.name: x for x in svc.method}
    assert svc.name == "TalkingHead" and set(methods) >= {"StreamSession", "GetModelInfo"}
    s = methods["StreamSession"]
    assert s.client_streaming and s.server_streaming
    assert s.input_type == ".eartalking.v1.SessionRequest" and s.output_type == ".eartalking.v1.SessionResponse"
    g = methods["GetModelInfo"]
    assert not g.client_streaming and not g.server_streaming and g.output_type == ".eartalking.v1.ModelInfo"


def test_generated_stubs_import_under_the_package():
    from eartalking.client._stubs import SERVICE_NAME, pb2, pb2_grpc

    assert SERVICE_NAME == "eartalking.v1.TalkingHead"
    assert pb2.__name__ == "eartalking._proto.eartalking.v1.talking_head_pb2"
    assert hasattr(pb2_grpc, "TalkingHeadStub")
