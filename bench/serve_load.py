"""The load side of `bench_serve.py`: a loopback uvicorn server in a thread, an asyncio + httpx
client that keeps N requests in flight for a fixed time (run in its own process, so it does not
compete with the server for the interpreter lock), and the CPU share other processes took meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K = 10  # results per query

QUERIES = (
    "a red heart", "a smiling face", "a crying face", "a thumbs up", "a birthday cake", "a pizza slice",
    "a cat face", "a dog face", "a rocket", "a full moon", "a rainbow", "a snowman", "a fire", "a star",
    "a sun behind a cloud", "a lightning bolt", "an umbrella with rain", "a red apple", "a banana",
    "a watermelon", "a cup of coffee", "a glass of wine", "a beer mug", "a soccer ball", "a basketball",
    "a trophy", "a gift box", "a party popper", "a balloon", "a christmas tree", "a jack-o-lantern", "a ghost",
    "a skull", "a robot face", "an alien", "a unicorn", "a dragon", "a turtle", "a snake", "an octopus",
    "a whale", "a fish", "a butterfly", "a bee", "a ladybug", "a sunflower", "a rose", "a cactus",
    "a palm tree", "a maple leaf", "a mushroom", "a house", "a castle", "a car", "a bicycle", "an airplane",
    "a train", "a ship", "a police car", "a fire engine", "a traffic light", "a clock", "an hourglass",
    "a light bulb", "a key", "a lock", "a hammer", "a pencil", "a book", "a laptop", "a mobile phone",
    "a camera", "a television", "a guitar", "a trumpet", "a microphone", "headphones", "a crown", "a ring",
    "a gem stone", "a money bag", "a dollar bill", "the flag of japan", "a checkered flag", "a waving hand",
    "clapping hands", "a flexed biceps", "a face with tears of joy", "a winking face",
    "a face with sunglasses", "a sleeping face", "an angry face", "a face blowing a kiss", "a broken heart",
    "a blue heart", "a green circle", "a red cross mark", "a check mark", "a question mark", "a warning sign",
    "a dog on the beach", "a cat sleeping on a sofa", "a child flying a kite", "a red car parked on a street",
    "a bowl of fruit on a table", "a mountain lake at sunrise", "a city skyline at night",
    "a bridge over a river", "a man riding a bicycle", "a woman reading a book", "two people shaking hands",
    "a plate of spaghetti", "a cup of tea and biscuits", "a snowy forest", "a desert with sand dunes",
    "waves crashing on rocks", "a lighthouse on a cliff", "a farm with cows", "a horse in a field",
    "a flock of birds in the sky", "a bowl of soup", "a birthday party with balloons",
    "a classroom with a blackboard", "a kitchen with a wooden table", "a bedroom with a white bed",
    "a garden full of flowers", "a street market", "a train at a station", "an airplane taking off",
    "a sailboat on the sea", "a fishing boat in a harbour", "a tractor in a field", "a penguin on ice",
    "a lion resting in the grass", "an elephant by a river", "a giraffe eating leaves", "a monkey in a tree",
    "a squirrel holding a nut", "a frog on a leaf", "a parrot on a branch", "a goldfish in a bowl",
    "a hamster in a cage", "a rabbit in the grass", "a duck swimming in a pond", "an owl at night",
    "a tiger walking", "a bear in the woods", "a deer in the forest", "a fox in the snow", "a wolf howling",
    "a pile of autumn leaves", "rain on a window", "a rainbow over hills", "a thunderstorm",
    "a foggy morning road", "a campfire at night", "a tent in the mountains", "a picnic in the park",
    "a football match", "a tennis player serving", "a swimmer in a pool", "a skier going downhill",
    "a surfer riding a wave", "a runner on a track", "a chess board", "a stack of books", "a laptop on a desk",
    "a vintage camera", "an old clock tower", "a church with a steeple", "a castle on a hill", "a windmill",
    "a hot air balloon", "fireworks over a city", "a christmas tree with lights", "a carved pumpkin",
    "a snowman in a garden", "a sandcastle", "a bowl of ice cream", "a slice of chocolate cake",
    "fresh bread on a board", "a hamburger and fries", "sushi on a plate", "a glass of orange juice",
    "a basket of eggs", "tomatoes on the vine", "a field of sunflowers", "a cherry tree in bloom",
    "a cactus in a pot", "a mossy stone wall", "a toy robot", "a teddy bear", "a box of crayons",
    "a drawing of a house", "a paper airplane", "a yellow school bus", "a fire truck", "a police officer",
    "a doctor with a stethoscope", "an astronaut in space",
)


@dataclass(frozen=True)
class Load:
    url: str
    concurrency: int
    seconds: float
    max_requests: int
    seed: int


@dataclass(frozen=True)
class Measured:
    latencies_ms: list[float]  # successful requests only
    errors: int
    error_samples: list[str]
    elapsed_s: float


async def _drive(load: Load) -> Measured:
    import httpx

    order = np.random.default_rng(load.seed).permutation(len(QUERIES))
    limits = httpx.Limits(max_connections=load.concurrency, max_keepalive_connections=load.concurrency)
    latencies, errors = [], []
    sent = 0
    async with httpx.AsyncClient(base_url=load.url, limits=limits, timeout=60.0) as client:
        t0 = time.perf_counter()
        deadline = t0 + load.seconds

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < load.max_requests:
                text = QUERIES[order[sent % len(order)]]
                sent += 1
                start = time.perf_counter()
                try:
                    r = await client.post("/search", json={"text": text, "k": K})
                except Exception as e:  # noqa: BLE001 (a failed request is a measured error)
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if r.status_code == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        elapsed = time.perf_counter() - t0
    return Measured(latencies, len(errors), errors[:3], elapsed)


def ping_ms(url: str, n: int = 50) -> float:
    """Median ms of GET /healthz, one at a time: the HTTP round trip with no search behind it."""
    import httpx

    with httpx.Client(base_url=url) as client:
        client.get("/healthz")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.get("/healthz").raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def drive(load: Load) -> Measured:
    """Child-process entry point: one concurrency level against one server."""
    return asyncio.run(_drive(load))


# --- serving ----------------------------------------------------------------------------------------


class LoopbackServer:
    """`retr serve`'s app on uvicorn in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, app) -> None:
        import uvicorn

        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and
        # without it (socket.socket()'s proto 0) Nagle + delayed ACK add ~40 ms to every answer.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def _ticks(pid: int | str = "self") -> int:
    """utime + stime of a process, in clock ticks (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


class CpuShare:
    """How much of the machine other processes (not this one, not the load generator) used since
    creation: on a shared machine, the sign that a measurement was disturbed."""

    def __init__(self, client_pid: int) -> None:
        self.client_pid = client_pid
        try:
            self.start = (_machine_ticks(), _ticks(), _ticks(client_pid))
        except (OSError, IndexError, ValueError):
            self.start = None

    def others(self) -> float:
        if self.start is None:
            return float("nan")
        (busy0, total0), self0, client0 = self.start
        busy, total = _machine_ticks()
        ours = _ticks() - self0 + _ticks(self.client_pid) - client0
        return 100.0 * max(0, busy - busy0 - ours) / max(1, total - total0)
