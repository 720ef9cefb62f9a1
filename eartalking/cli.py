"""The ``eartalking`` console script: one subcommand per job, each implemented in its own module.

Usage: eartalking <command> --help

Each module named in ``COMMANDS`` provides ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its command runs, so ``eartalking client`` never imports torch or ONNX Runtime.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("eartalking.data.assets", "fetch training faces and voices into the cache, with a provenance manifest"),
    "corpus": ("eartalking.data.corpus", "generate a talking-head corpus (MP4 + labels JSON per clip)"),
    "contact-sheet": ("eartalking.data.contact", "save a PNG contact sheet of corpus clips or identities"),
    "measure": ("eartalking.evaluate.measure", "measure any talking-head MP4: mouth, eyes, pose, identity, lip-sync"),
    "train-tokenizer": ("eartalking.train.tokenizer", "train the portrait-conditioned VQ tokenizer"),
    "train-audio": ("eartalking.train.audio", "pretrain the streaming audio encoder on mouth openness (optional)"),
    "train": ("eartalking.train.decoder", "train the audio encoder + SFA/FCIC step decoder"),
    "evaluate": ("eartalking.evaluate.report", "evaluate a checkpoint on held-out people and voices"),
    "export": ("eartalking.export.onnx", "export a checkpoint to the four ONNX graphs + manifest"),
    "verify": ("eartalking.export.verify", "verify exported graphs against PyTorch (or TensorRT against ONNX Runtime)"),
    "engines": ("eartalking.export.build_engines", "build TensorRT plans from the ONNX graphs (needs TensorRT)"),
    "generate": ("eartalking.runtime.generate", "portrait + speech -> talking-head MP4, in process"),
    "bench": ("eartalking.runtime.bench", "benchmark the embedded runtime (latency, fps, RSS, batching)"),
    "triton-repo": ("eartalking.triton_repo.render", "render the Triton model repository"),
    "triton-serve": ("eartalking.triton_repo.serve", "start tritonserver on the rendered repository (loopback)"),
    "serve": ("eartalking.runtime.server", "start the EARTalking gRPC API server"),
    "client": ("eartalking.client.cli", "stream a portrait + speech to a server and write the MP4"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eartalking",
        description="EARTalking: one portrait + a stream of speech -> a talking-head video, frame by frame.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\neartalking: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(prog=f"eartalking {name}", description=(module.__doc__ or help_).strip())
    cmd.formatter_class = argparse.RawDescriptionHelpFormatter
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # clear, expected problems: no traceback
        print(f"eartalking {name}: error: {e}", file=sys.stderr)
        return 2


class UserError(Exception):
    """A problem with what the user gave us (file, value, limit). Printed without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
