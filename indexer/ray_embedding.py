"""Embedding a build's new texts on a Ray cluster (RECSEARCH_RAY_ADDRESS, `build --ray`).

The texts the build could not reuse go to Ray Data in shards (pyarrow tables of row id and
text, longest texts first so that a batch pads to similar lengths, as Embedder.encode orders
them here). An actor pool of this project's Embedder maps them batch by batch: one actor per
CPU the cluster offers, each with one encoder thread, or one per GPU where the cluster has
them. Ray Data returns blocks in whatever order they finish, so each vector travels with its
row id and is put back by it. An actor that dies (its process killed, its node lost) is
restarted by Ray and its batches run again (`max_restarts`, `max_task_retries`).

The driver (this process) must run on a node of the cluster, as Ray requires of a driver
given a host:port address; ray://host:port (Ray Client) is passed through untested. Every
node needs recsearch installed, and reads the ONNX export from the data folder the driver's
encoder loaded it from (a node without that folder exports once into it, under its lock).
`import ray` happens only here, when a build is asked to use Ray.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.core.config import Settings
from engine.core.errors import ConfigError, NotReady
from engine.encoder.embedder import Embedder

log = logging.getLogger(__name__)

# Seconds to wait for the address to accept a connection: Ray itself retries an unreachable
# GCS for minutes before giving up.
CONNECT_TIMEOUT_S = 5.0
MAX_ACTORS = 64  # with RECSEARCH_RAY_ACTORS=0; a number set there may go past it
# An actor lost this many times (or a batch failing this many times) fails the build.
RETRIES = 3
# Shards hold whole batches: at least 4 shards per actor (a straggler or a restart costs
# little), at most this many batches each.
MAX_SHARD_BATCHES = 64
VARIABLE = "RECSEARCH_RAY_ADDRESS"


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of host:port or ray://host:port; ConfigError naming the variable else."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{VARIABLE}={address!r}: expected host:port of a Ray cluster's head (the GCS "
            "port `ray start --head --port` gave), e.g. 10.0.0.5:6379, or ray://host:10001"
        )
    return host, int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raises NotReady naming the address when nothing accepts a connection there within
    timeout_s (ConfigError when it is not an address)."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise NotReady(
            f"the Ray cluster at {address} ({VARIABLE}) does not answer: {exc}. Start it "
            "(`ray start --head --port=...`), fix the address, or unset it to embed here"
        ) from exc


class RayEmbedding:
    """Encodes texts on the Ray cluster at settings.ray_address, as Embedder.encode does here.

    Each encode connects as a driver (once check_reachable passed: Ray itself would wait for
    minutes on an address that does not answer), runs and disconnects.
    """

    where = "ray"

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        parse_address(settings.ray_address)
        self.address = settings.ray_address
        self.dim = embedder.dim
        self.batch_size = settings.embed_batch_size
        self.wanted_actors = settings.ray_actors
        self.device = settings.device
        # Each actor builds the same encoder from the same settings, with one thread, and
        # finds the driver's checked export where the driver's encoder loaded it from.
        self.actor_settings = settings.replace(
            encoder_threads=1, cache_dir=_export_home(embedder, settings)
        )
        self.actors = 0
        self.items = 0

    def describe(self) -> dict[str, Any]:
        """Where the version's new vectors were made: the manifest's "embedding"."""
        return {
            "where": self.where,
            "address": self.address,
            "actors": self.actors,
            "items": self.items,
        }

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized, in the input's order; progress(n) as
        blocks of n vectors come back.

        Raises NotReady when the cluster refuses this process as a driver, ConfigError when
        Ray is not installed or the settings ask for a device the cluster lacks.
        """
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                f"{VARIABLE}={self.address}: Ray is not installed here; pip install "
                "'recsearch[ray]' on this machine and on every node of the cluster"
            ) from exc
        connected_here = self._connect(ray)
        try:
            return self._run(ray, texts, progress)
        finally:
            if connected_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Connect as a driver unless already connected to this cluster; True if it did."""
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if current == self.address.removeprefix("ray://"):
                return False
            raise ConfigError(
                f"{VARIABLE}={self.address}: this process is already a Ray driver of "
                f"{current}; disconnect it (ray.shutdown()) or build with that address"
            )
        check_reachable(self.address)
        host, _ = parse_address(self.address)
        options: dict[str, Any] = {}
        if not self.address.startswith("ray://") and _is_loopback(host):
            # A driver joins the node of its own IP; Ray would take 127.0.0.1 (or the routable
            # address) for this machine and not find a node pinned to e.g. 127.0.0.2.
            options["_node_ip_address"] = host
        try:
            ray.init(
                address=self.address,
                logging_level=logging.WARNING,
                configure_logging=False,  # the CLI and the server own logging
                log_to_driver=False,  # actors' logs stay in the cluster's session folder
                **options,
            )
        except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError, ...
            raise NotReady(
                f"the Ray cluster at {self.address} ({VARIABLE}) refused this driver: {exc}"
            ) from exc
        return True

    def _run(
        self, ray: Any, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> np.ndarray:
        import pyarrow as pa

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the build reports its own progress
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if self.device.startswith("cuda") and gpus == 0:
            raise ConfigError(
                f"RECSEARCH_DEVICE={self.device}: the Ray cluster at {self.address} has no GPU"
            )
        on_gpu = gpus > 0 and self.device != "cpu"
        capacity = gpus if on_gpu else cpus
        if not capacity:
            raise NotReady(f"the Ray cluster at {self.address} offers no CPU to run encoders")
        if self.wanted_actors > capacity:
            # A fixed-size pool larger than the cluster would wait for actors that never start.
            log.warning(
                "RECSEARCH_RAY_ACTORS=%d: the cluster at %s has room for %d; starting %d",
                self.wanted_actors,
                self.address,
                capacity,
                capacity,
            )
        wanted = min(self.wanted_actors or min(capacity, MAX_ACTORS), capacity)

        n = len(texts)
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        batches = math.ceil(n / self.batch_size)
        per_shard = max(1, min(MAX_SHARD_BATCHES, batches // (wanted * 4)))
        shard_rows = per_shard * self.batch_size
        shards = [
            pa.table(
                {
                    "row": pa.array(order[s : s + shard_rows], type=pa.int64()),
                    "text": pa.array([texts[i] for i in order[s : s + shard_rows]], pa.string()),
                }
            )
            for s in range(0, n, shard_rows)
        ]
        self.actors = min(wanted, len(shards))
        resource_args = {"num_gpus": 1} if on_gpu else {}
        log.info(
            "embedding %d texts on Ray at %s: %d shards, %d %s actors",
            n,
            self.address,
            len(shards),
            self.actors,
            "GPU" if on_gpu else "CPU",
        )
        with warnings.catch_warnings():
            # Ray 2.60 deprecates map_batches' **ray_remote_args (to go in 2.64, hence the
            # extra's bound) and names no parameter for these two. Its defaults are -1:
            # a batch whose text kills every actor that encodes it would be retried forever.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
            dataset = ray.data.from_arrow_refs([ray.put(shard) for shard in shards]).map_batches(
                EncoderActor,
                fn_constructor_kwargs={"settings": self.actor_settings},
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=1,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
                **resource_args,
            )
        vectors = np.empty((n, self.dim), dtype=np.float32)
        seen = np.zeros(n, dtype=bool)
        try:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                rows = np.asarray(block["row"], dtype=np.int64)
                vectors[rows] = np.asarray(block["vector"], dtype=np.float32)
                seen[rows] = True
                if progress is not None:
                    progress(len(rows))
        except Exception as exc:  # an actor lost more than RETRIES times, a node gone, ...
            raise NotReady(
                f"embedding on the Ray cluster at {self.address} failed after Ray's retries: "
                f"{type(exc).__name__}: {str(exc)[:500]}; the serving version is unchanged"
            ) from exc
        if not seen.all():  # Ray Data returns each block once; a gap is a bug, never a zero
            raise RuntimeError(f"Ray returned no vector for {int((~seen).sum())} of {n} texts")
        self.items = n
        return vectors


class EncoderActor:
    """One encoder in the pool: the project's Embedder, built once per actor process."""

    def __init__(self, settings: Settings) -> None:
        self.embedder = Embedder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {"row": batch["row"], "vector": self.embedder.encode(texts)}


def _export_home(embedder: Embedder, settings: Settings) -> Any:
    """The folder whose encoders/ holds the export the driver's encoder loaded
    (<it>/encoders/<model digest>/<library key>/model.onnx: the per-user cache, or the data
    dir where that was not writable), absolute; the driver's cache setting for torch."""
    if embedder.check is not None:
        return embedder.check.model_file.resolve().parents[3]
    return settings.cache_dir


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
