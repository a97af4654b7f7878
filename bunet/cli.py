"""Command lines: ``bunet-client``, ``bunet-server``, ``bunet-model``.

Every failure a user can cause (bad file, unreachable server, TLS or token failure, model/scan
mismatch, server limits) ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .heap import tune_malloc

if TYPE_CHECKING:  # imported lazily at run time: argument errors must not wait for NumPy
    from . import batch
    from .client import Client

# The heavy work runs in the native kernels' own threads; idle OpenBLAS worker threads would only
# spin against them (about a fifth of a core each). Must be set before NumPy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


EXIT_USAGE = 2
EXIT_FAIL = 1
OT_CHOICES = ("silent", "softspoken")  # bunet.gc.OT_BACKENDS, named here so --help loads no native engine


def _fail(msg: str, code: int = EXIT_FAIL) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        try:
            return Path(args.token_file).read_text().strip() or None
        except OSError as e:
            raise ValueError(f"cannot read token file {args.token_file}: {e.strerror}") from None
    return getattr(args, "token", None) or os.environ.get("BUNET_TOKEN") or None


# ---------------------------------------------------------------------------------------------
# bunet-client


def client_main(argv: list[str] | None = None) -> int:
    tune_malloc()
    ap = argparse.ArgumentParser(prog="bunet-client", description="Secure lesion segmentation of a chest CT scan.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    seg = sub.add_parser("segment", help="segment CT scans; a scan never leaves this machine in the clear")
    seg.add_argument(
        "scans",
        nargs="+",
        metavar="SCAN",
        help="CT scan in HU: a .nii/.nii.gz file or a folder holding one DICOM series; or a folder of such cases",
    )
    seg.add_argument(
        "--server",
        metavar="HOST:PORT[,...]",
        help="BUNET server(s): a scan's jobs are spread over "
        "them and move to another when one fails (default: an embedded local server with the bundled "
        "model)",
    )
    seg.add_argument(
        "-o",
        "--output",
        help="mask file .nii/.nii.gz (default: <scan>_mask.nii.gz beside the scan), "
        "or a folder (each case gets <name>_mask.nii.gz there)",
    )
    seg.add_argument("--planes", help="comma-separated planes among xy,yz,xz (default: those the model serves)")
    seg.add_argument(
        "--fusion",
        choices=["majority", "union", "single"],
        default="majority",
        help="how per-plane masks are combined (default: majority vote)",
    )
    seg.add_argument(
        "--preview",
        metavar="PNG",
        nargs="?",
        const="",
        help="also write a PNG: per plane the slice with the most lesion, with the lung contour "
        "(no name: <name>_preview.png)",
    )
    seg.add_argument(
        "--report",
        metavar="JSON",
        nargs="?",
        const="",
        help="also write the lesion-burden report as JSON (no name: <name>_report.json)",
    )
    seg.add_argument(
        "--dicom-seg",
        metavar="DCM",
        nargs="?",
        const="",
        help="for a DICOM input, also write a DICOM Segmentation referencing the series (no name: <name>_seg.dcm)",
    )
    seg.add_argument("--series", metavar="UID", help="the series to use when a DICOM folder holds several")
    seg.add_argument(
        "--no-lung-mask",
        action="store_true",
        help="keep lesion voxels outside the lung fields (default: only the lungs are segmented)",
    )
    seg.add_argument("--overwrite", action="store_true", help="redo cases whose outputs exist (default: skip them)")
    _connection_args(seg)
    ev = sub.add_parser(
        "evaluate",
        help="validation study on labelled cases: secure masks against the labels "
        "and, where the server allows it, against its plaintext float and fixed-point masks",
    )
    ev.add_argument(
        "cases",
        help="a folder of 2D slices (PNG/JPEG, or an images/ sub-folder) or of NIfTI volumes, or one NIfTI volume",
    )
    ev.add_argument(
        "--truth", metavar="LABELS", help="folder of label files with the cases' names (or one label volume)"
    )
    ev.add_argument("--out", default="report", help="report folder (default: report/)")
    ev.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="BUNET server (default: an embedded local server with "
        "the bundled model, which also gives the plaintext masks)",
    )
    ev.add_argument("--secure-only", action="store_true", help="do not ask for plaintext masks")
    ev.add_argument("--limit", type=int, default=0, help="the first N cases only")
    _connection_args(ev)
    args = ap.parse_args(argv)
    try:
        return _segment(args) if args.cmd == "segment" else _evaluate(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model file for the embedded server (default: the bundled model)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's trusted CAs")
    p.add_argument("--ca", help="CA certificate (PEM) that signed the server's certificate (implies --tls)")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client private key (PEM) for mutual TLS")
    p.add_argument("--token", help="access token (prefer --token-file or BUNET_TOKEN)")
    p.add_argument("--token-file", help="file holding the access token")
    p.add_argument("--insecure", action="store_true", help="allow sending the token without TLS (trusted networks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--ot", choices=OT_CHOICES, help="correlated OT of the garbled circuits (default: silent if offered)"
    )


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvaluationError, run

    if args.limit < 0:
        return _fail("--limit must be positive", EXIT_USAGE)
    try:
        return run(args, _token(args))
    except (EvaluationError, ValueError) as e:
        return _fail(str(e))


def _segment(args: argparse.Namespace) -> int:
    from . import volume
    from .client import Client, ClientError
    from .model.graph import ModelError

    planes = [p.strip() for p in args.planes.split(",") if p.strip()] if args.planes else None
    if planes is not None:
        bad = [p for p in planes if p not in volume.PLANES]
        if bad or not planes:
            return _fail(f"--planes takes xy, yz and/or xz, got {args.planes!r}", EXIT_USAGE)
    if args.model and args.server:
        return _fail("--model is for the embedded server; a remote server has its own model", EXIT_USAGE)
    if bool(args.cert) != bool(args.key):
        return _fail("mutual TLS needs both --cert and --key", EXIT_USAGE)
    from . import batch

    found = batch.discover(args.scans)
    wanted = [k for k in ("report", "preview", "dicom_seg") if getattr(args, k) is not None]
    opts = batch.Options(planes, args.fusion, not args.no_lung_mask, args.series)
    bar = _ProgressBar(args.quiet)
    client_box: list[Client] = []

    def client_for() -> Client:
        if not client_box:
            client_box.append(
                Client(
                    args.server,
                    token=_token(args),
                    tls=args.tls,
                    ca=args.ca,
                    cert=args.cert,
                    key=args.key,
                    model=args.model,
                    status=bar.status,
                    ot=args.ot,
                    insecure=args.insecure,
                )
            )
        return client_box[0]

    def progress_for(case: batch.Case) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
        return bar.open(f"{case.name}: secure inference"), bar.close

    errors = (ClientError, volume.ScanError, ModelError, ValueError, OSError)
    try:
        if batch.is_batch(args.scans, found):
            return _segment_batch(args, found, wanted, opts, client_for, progress_for, errors)
        made: list[Path] = []
        outputs = _single_outputs(args, found[0], wanted, made)
        progress, close = progress_for(found[0])
        try:
            outcome = batch.run_case(found[0], client_for, outputs, opts, progress)
        except errors:
            for d in made:  # a failed case leaves nothing behind, not even the folder -o created
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        finally:
            close()
    except errors as e:
        return _fail(str(e))
    finally:
        for c in client_box:
            c.close()
    for line in outcome.lines:
        print(line, file=sys.stderr)
    return 0


class _ProgressBar:
    """The progress bar of the case being segmented (a tqdm bar on a terminal, nothing when quiet);
    the client's waits (the server's queue, retries) show as its description."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.desc = "secure inference"
        self.waiting = False  # the description shows a wait, not self.desc

    def open(self, desc: str) -> Callable[[int, int], None] | None:
        self.close()
        self.desc = desc
        if self.quiet:
            return None
        from tqdm import tqdm

        self.bar = tqdm(
            total=1, unit="step", desc=desc, file=sys.stderr, leave=False, disable=None
        )  # None: no bar when stderr is not a terminal
        return self.progress

    def status(self, text: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.set_description_str(text)
            self.waiting = True
        else:  # quiet, or stderr is not a terminal: a line per wait
            print(f"bunet-client: {text}", file=sys.stderr)

    def progress(self, done: int, total: int) -> None:
        if self.bar is not None:
            if done and self.waiting:
                self.bar.set_description_str(self.desc)
                self.waiting = False
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _single_outputs(args: argparse.Namespace, case: batch.Case, wanted: list[str], made: list[Path]) -> dict[str, Path]:
    """One scan: -o is the mask file, or a folder (one that exists, or a name without a suffix)
    for it; the other outputs as named or beside the mask. Folders it creates are added to
    ``made``, innermost first."""
    from . import batch

    out = Path(args.output) if args.output else None
    if out is not None and (out.is_dir() or not out.suffix):
        made.extend(d for d in (out, *out.parents) if not d.exists())
        out.mkdir(parents=True, exist_ok=True)
        outputs = batch.outputs_for(case, out, wanted)
    else:
        outputs = batch.outputs_for(case, None, wanted)
        if out is not None:
            outputs["mask"] = out
    stem = batch.case_name(outputs["mask"]).removesuffix("_mask")
    for k in wanted:
        name = getattr(args, k)
        outputs[k] = Path(name) if name else outputs["mask"].with_name(stem + batch.OUTPUTS[k])
    return outputs


def _segment_batch(
    args: argparse.Namespace,
    found: list[batch.Case],
    wanted: list[str],
    opts: batch.Options,
    client_for: Callable[[], Client],
    progress_for: Callable[[batch.Case], tuple],
    errors: tuple[type[BaseException], ...],
) -> int:
    """Several cases: each runs on its own; a summary table; exit 1 when any case failed."""
    from . import batch

    named = [f"--{k.replace('_', '-')}" for k in wanted if getattr(args, k)]
    if named:
        return _fail(
            f"with several cases, give {', '.join(named)} without a file name: each case's file is named after it",
            EXIT_USAGE,
        )
    out_dir = Path(args.output) if args.output else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            return _fail(f"with several cases, -o must be a folder; {out_dir} is a file", EXIT_USAGE)
        out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = batch.run_batch(
        found, client_for, out_dir, wanted, opts, overwrite=args.overwrite, errors=errors, progress_for=progress_for
    )
    for line in batch.summary_table(outcomes):
        print(line, file=sys.stderr)
    failed = sum(o.status == "failed" for o in outcomes)
    if failed:
        print(f"{failed} of {len(outcomes)} cases failed", file=sys.stderr)
    return EXIT_FAIL if failed else 0


# ---------------------------------------------------------------------------------------------
# bunet-server


def server_main(argv: list[str] | None = None) -> int:
    tune_malloc()
    ap = argparse.ArgumentParser(prog="bunet-server", description="Serve a BUNET model for secure segmentation.")
    ap.add_argument("--model", help="model file (.bunet); default: the bundled model")
    ap.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    ap.add_argument("--tls-cert", help="server certificate chain (PEM)")
    ap.add_argument("--tls-key", help="server private key (PEM)")
    ap.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    ap.add_argument("--token-file", help="file with the bearer token clients must present (or BUNET_TOKEN)")
    ap.add_argument("--insecure", action="store_true", help="accept a token without TLS (trusted networks only)")
    ap.add_argument(
        "--max-sessions",
        type=int,
        default=2,
        help="clients served at once; a client's parallel streams count as one (default 2)",
    )
    ap.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="jobs that may wait for their turn; beyond it clients are told to retry (default 16)",
    )
    ap.add_argument("--max-slices", type=int, default=256, help="slices per job (default 256)")
    ap.add_argument(
        "--memory-budget",
        metavar="SIZE",
        default=None,
        help="memory the server may plan for, e.g. 16G (default: three quarters of the host's)",
    )
    ap.add_argument(
        "--filter-cache",
        metavar="SIZE",
        default=None,
        help="memory for the prepared HomConv kernels, e.g. 8G; the rest are rebuilt per call, slower "
        "(default: three quarters of the memory budget)",
    )
    ap.add_argument(
        "--slice-sizes",
        metavar="HxW,...",
        default=None,
        help="slice sizes served besides the model's input size, e.g. 256x256,512x512",
    )
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        help="seconds one protocol message may take to arrive (default 120)",
    )
    ap.add_argument(
        "--deadline-per-mpixel",
        type=float,
        default=7200.0,
        help="a job's deadline: 120 s plus this many seconds per megapixel of its slices (default 7200)",
    )
    ap.add_argument(
        "--allow-plain-eval",
        action="store_true",
        help="answer plaintext evaluation requests "
        "(images sent in the clear, masks returned): for validation on public labelled sets only",
    )
    ap.add_argument(
        "--ot",
        default=",".join(OT_CHOICES),
        metavar="KIND,...",
        help="correlated-OT backends clients may choose, among silent,softspoken (default: both)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if (
        min(args.max_sessions, args.max_slices) < 1
        or args.max_queue < 0
        or min(args.idle_timeout, args.deadline_per_mpixel) <= 0
    ):
        return _fail("limits must be positive", EXIT_USAGE)
    ots = tuple(dict.fromkeys(o.strip() for o in args.ot.split(",") if o.strip()))
    if not ots or not set(ots) <= set(OT_CHOICES):
        return _fail(f"--ot takes silent and/or softspoken, got {args.ot!r}", EXIT_USAGE)
    from .model.graph import ModelError
    from .server import Server
    from .service.admission import parse_bytes

    try:
        budget = parse_bytes(args.memory_budget) if args.memory_budget else None
        cache = parse_bytes(args.filter_cache) if args.filter_cache else None
        sizes = _slice_sizes(args.slice_sizes) if args.slice_sizes else None
        token = _token(args)
        srv = Server(
            args.model,
            args.listen,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
            token=token,
            max_sessions=args.max_sessions,
            max_queue=args.max_queue,
            max_slices=args.max_slices,
            idle_timeout_s=args.idle_timeout,
            memory_budget=budget,
            filter_cache_bytes=cache,
            slice_sizes=sizes,
            deadline_s_per_mpixel=args.deadline_per_mpixel,
            allow_plain_eval=args.allow_plain_eval,
            ots=ots,
            insecure=args.insecure,
        ).start()
    except (ModelError, ValueError, OSError, RuntimeError) as e:
        return _fail(str(e))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"bunet-server: serving {srv.model.name!r} on {srv.address}"
        f"{' with TLS' if args.tls_cert else ''}{' (token required)' if token else ''}"
        f"{'; plaintext evaluation ON' if args.allow_plain_eval else ''}",
        file=sys.stderr,
    )
    stop.wait()
    print("bunet-server: shutting down (finishing running sessions)", file=sys.stderr)
    srv.stop(grace=30.0)
    return 0


def _slice_sizes(text: str) -> list[tuple[int, int]]:
    """'256x256,512x384' -> [(256, 256), (512, 384)]."""
    out = []
    for part in text.split(","):
        h, sep, w = part.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise ValueError(f"--slice-sizes takes HxW pairs such as 256x256, got {part.strip()!r}")
        out.append((int(h), int(w)))
    return out


# ---------------------------------------------------------------------------------------------
# bunet-model


def model_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bunet-model", description="Inspect and convert BUNET model files.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info", help="print a model file without its weights")
    info.add_argument("model", nargs="?", help="model file (default: the bundled model)")
    info.add_argument("--json", action="store_true", help="print the full JSON header")
    conv = sub.add_parser("import-onnx", help="convert an ONNX U-Net (exported by PyTorch) to a .bunet file")
    conv.add_argument("onnx")
    conv.add_argument("-o", "--output", required=True)
    conv.add_argument("--name", default=None)
    conv.add_argument("--input-size", type=int, nargs=2, default=[128, 128])
    conv.add_argument("--ring-bits", type=int, default=24)
    conv.add_argument("--frac-bits", type=int, default=8)
    conv.add_argument("--weight-frac-bits", type=int, default=8)
    conv.add_argument("--planes", default="xy")
    conv.add_argument("--public-fields", default="", help="comma-separated metadata keys clients may see")
    pub = sub.add_parser("set-public", help="choose the metadata keys clients may see (all others stay on the server)")
    pub.add_argument("model")
    pub.add_argument("fields", help="comma-separated metadata keys; '' publishes none")
    args = ap.parse_args(argv)
    from .model.graph import ModelError

    try:
        if args.cmd == "info":
            return _model_info(args)
        if args.cmd == "set-public":
            return _model_set_public(args)
        return _model_import(args)
    except (ModelError, ValueError, OSError) as e:
        return _fail(str(e))


def _model_info(args: argparse.Namespace) -> int:
    from .model.format import Model
    from .model.plan import compile_plan
    from .server import bundled_model_path

    path = Path(args.model) if args.model else bundled_model_path()
    m = Model.load(path)
    if args.json:
        print(json.dumps(m.header(), indent=1))
        return 0
    q, pp = m.quantization, m.preprocessing
    print(f"model:        {m.name}  ({path}, {path.stat().st_size:,} bytes)")
    if m.description:
        print(f"description:  {m.description}")
    print(f"format:       bunet-model v{m.header()['format_version']}")
    print(f"planes:       {', '.join(f'{p} -> {n}' for p, n in m.plane_networks.items())}")
    win = f"HU window center {pp.center:g}, width {pp.width:g}" if pp.kind == "hu_window" else "values as given"
    print(f"input:        {pp.input_size[0]}x{pp.input_size[1]}, {win}; classes: {', '.join(pp.classes)}")
    print(
        f"quantization: ring Z_2^{q.ring_bits}, {q.frac_bits} fraction bits (activations), "
        f"{q.weight_frac_bits} (weights)" + (f", narrowed inputs: {q.in_bits}" if q.in_bits else "")
    )
    print(f"parameters:   {m.parameter_count():,}")
    for name, net in m.networks.items():
        plan = compile_plan(net, q)
        h, w = pp.input_size
        shapes = net.graph.shapes(int(net.graph.input.attrs.get("channels", 1)), h, w, net.weights)
        print(
            f"network {name!r}: {len(net.graph.nodes)} nodes, "
            f"{plan.relu_count(h, w):,} garbled-circuit instances per slice"
        )
        for n in net.graph.nodes:
            extra = ""
            if n.op in ("conv", "conv_transpose"):
                extra = f" weight {tuple(net.weights[n.name + '.weight'].shape)}"
                if n.op == "conv":
                    extra += f" pad {n.attrs.get('pad', 0)}"
            c, hh, ww = shapes[n.name]
            print(f"  {n.name:<18} {n.op:<15} <- {', '.join(n.inputs) or '-':<22} -> {c}x{hh}x{ww}{extra}")
    if m.metadata:
        print("metadata:     (* = public: sent to clients)")
        for k, v in m.metadata.items():
            print(f" {'*' if k in m.public_fields else ' '}{k}: {json.dumps(v) if not isinstance(v, str) else v}")
    return 0


def _fields(text: str) -> list[str]:
    return list(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))


def _model_set_public(args: argparse.Namespace) -> int:
    from .model.format import Model

    m = Model.load(args.model)
    fields = _fields(args.fields)
    missing = [f for f in fields if f not in m.metadata]
    if missing:
        return _fail(f"no metadata field {', '.join(missing)} in {args.model} (it has: {', '.join(m.metadata)})")
    m.public_fields = fields
    m.save(args.model)
    print(f"public metadata of {args.model}: {', '.join(fields) or 'none'}")
    return 0


def _model_import(args: argparse.Namespace) -> int:
    from .model.format import Model, Preprocessing, Quantization
    from .model.onnx_import import load_onnx

    net = load_onnx(args.onnx)
    planes = [p.strip() for p in args.planes.split(",") if p.strip()]
    m = Model(
        name=args.name or Path(args.onnx).stem,
        networks={"main": net},
        plane_networks={p: "main" for p in planes},
        quantization=Quantization(args.ring_bits, args.frac_bits, args.weight_frac_bits),
        preprocessing=Preprocessing(input_size=tuple(args.input_size)),
    )
    m.public_fields = [f for f in _fields(args.public_fields) if f in m.metadata]
    m.save(args.output)
    print(f"wrote {args.output} ({m.parameter_count():,} parameters)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(client_main())
