"""Run logging: metrics.jsonl (always), W&B (`logger=wandb`) or TensorBoard (`logger=tensorboard`) on
rank 0, a tqdm bar on rank 0.

Non-zero ranks get a logger that only writes their `samples.rank<R>.jsonl`, so callers never branch
on rank. On resume, lines for steps after the checkpoint are dropped from metrics.jsonl and the
samples files (those steps are trained again and re-logged), keeping one line per step.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
import warnings
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

from ct_train import distributed as dist
from ct_train import io
from ct_train.config import LoggerConfig
from ct_train.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
GENERATIONS_FILE = "generations.jsonl"  # the evals' greedy generations


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The rows of a JSON-lines file. A torn last line (a process killed mid-write) is dropped with a
    warning naming it; a bad line before the last is a ValueError naming file:line."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            warnings.warn(f"{path}:{n}: dropped a torn last line (a write cut short)", stacklevel=2)
    return rows


def _truncate_after(path: str, step: int) -> None:
    """Keep only lines with `step` <= step (atomic rewrite)."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    io.write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def check_wandb_login(cfg: LoggerConfig) -> None:
    """Before the model loads: logger=wandb online needs the wandb package and a key (WANDB_API_KEY,
    or `wandb login`'s entry in ~/.netrc for the W&B host); ConfigError in one line otherwise."""
    if cfg.name != "wandb" or cfg.mode != "online" or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package (pip install wandb)") from None
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not os.environ.get("WANDB_API_KEY") and not _netrc_login(urlparse(base_url).hostname):
        raise ConfigError(
            "logger=wandb logger.mode=online needs a W&B login: run `wandb login` or set WANDB_API_KEY "
            "(or use logger.mode=offline and `wandb sync` later)"
        )
    _check_reachable(base_url)


def _netrc_login(host: Optional[str]) -> bool:
    import netrc

    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


# How long the start waits to reach the W&B server (or the proxy); wandb.init itself waited 132 s
# without a network before failing with a traceback, after the model had loaded.
WANDB_CONNECT_TIMEOUT_S = 10.0


def _check_reachable(base_url: str) -> None:
    """ConfigError in one line unless a TCP connection to the W&B server (or to the HTTPS proxy,
    when one is set) opens within WANDB_CONNECT_TIMEOUT_S."""
    url = urlparse(base_url)
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if url.scheme == "https" else None
    target = urlparse(proxy) if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=WANDB_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        via = f" through the proxy {target.hostname}:{port}" if proxy else ""
        raise ConfigError(
            f"logger=wandb logger.mode=online: cannot reach {url.scheme}://{url.hostname}{via} "
            f"({e.strerror or str(e) or 'timed out'}); use logger.mode=offline and `wandb sync` later"
        ) from None


class RunLogger:
    def __init__(
        self,
        cfg: LoggerConfig,
        output_dir: str,
        resolved_config: Dict[str, Any],
        max_steps: int,
        start_step: int,
        log_samples: bool,
    ) -> None:
        self.main = dist.is_main()
        self.output_dir = output_dir
        self.metrics_path = os.path.join(output_dir, METRICS_FILE)
        self.samples_path = os.path.join(output_dir, f"samples.rank{dist.rank()}.jsonl") if log_samples else None
        self.generations_path = os.path.join(output_dir, GENERATIONS_FILE)
        if self.samples_path:
            _truncate_after(self.samples_path, start_step)
        if self.main:
            _truncate_after(self.metrics_path, start_step)
            _truncate_after(self.generations_path, start_step)
        # Whether metrics.jsonl holds lines of this run, to notice it being deleted under the run.
        self.metrics_written = self.main and os.path.exists(self.metrics_path)
        self.wandb = None
        if self.main and cfg.name == "wandb":
            self.wandb = self._init_wandb(cfg, resolved_config)
        self.tensorboard = None
        if self.main and cfg.name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run hides the events written after its checkpoint (retrained now).
            self.tensorboard = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=start_step or None)
        self.bar = None
        if self.main and cfg.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _init_wandb(self, cfg: LoggerConfig, resolved_config: Dict[str, Any]) -> Any:
        import wandb

        # One W&B run per output dir: a resumed job continues the same run.
        id_file = os.path.join(self.output_dir, "wandb_run_id")
        if os.path.exists(id_file):
            run_id = open(id_file).read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            with open(id_file, "w") as f:
                f.write(run_id)
        return wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name,
            tags=list(cfg.tags),
            mode=cfg.mode,
            dir=self.output_dir,
            config=resolved_config,
            id=run_id,
            resume="allow",
        )

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        """One metrics.jsonl line (and W&B point) for `step`."""
        if not self.main:
            return
        row = {"step": step, **metrics}
        if self.metrics_written and not os.path.exists(self.metrics_path):
            self.write(
                f"warning: {self.metrics_path} was deleted while the run wrote it: its lines before step {step} are "
                "gone" + (" (W&B has them)" if self.wandb is not None else "") + "; a new file starts at this step"
            )
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.metrics_written = True
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, global_step=step)
            self.tensorboard.flush()

    def log_generations(self, step: int, rows: List[Dict[str, Any]]) -> None:
        """The eval's greedy generations: a generations.jsonl line each, and a W&B table of them."""
        if not self.main or not rows:
            return
        with open(self.generations_path, "a") as f:
            f.writelines(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n" for row in rows)
        if self.wandb is not None:
            import wandb

            columns = ["step", *rows[0]]
            table = wandb.Table(columns=columns, data=[[step, *row.values()] for row in rows])
            self.wandb.log({"eval/generations": table}, step=step)
        if self.tensorboard is not None:  # TensorBoard's text tab renders markdown
            cell = lambda text: str(text).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
            lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
            lines += ["| " + " | ".join(cell(v) for v in row.values()) + " |" for row in rows]
            self.tensorboard.add_text("eval/generations", "\n".join(lines), global_step=step)

    def log_samples(self, step: int, ids: List[str], plan: Optional[Dict[str, float]] = None) -> None:
        """This rank's trained sample ids for `step`, and the curriculum's plan as this rank saw it
        (so a test, or a user, can check that every rank made the same decision)."""
        if self.samples_path:
            row: Dict[str, Any] = {"step": step, "ids": ids}
            if plan is not None:
                row["plan"] = plan
            with open(self.samples_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def progress(self, step: int, postfix: Optional[Dict[str, str]] = None) -> None:
        if self.bar is not None:
            self.bar.n = step
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def write(self, message: str) -> None:
        """A line on rank 0's console that does not break the progress bar."""
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
