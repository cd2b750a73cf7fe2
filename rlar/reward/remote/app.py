"""The HTTP app around one reward: ``POST /score``, ``GET /health``, ``GET /info``."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from rlar.contracts import Reward
from rlar.reward.mixture import WeightedReward
from rlar.reward.remote.auth import auth_error
from rlar.reward.remote.wire import WireError, decode_request, encode_scores

log = logging.getLogger(__name__)


class UnservableReward(ValueError):
    """A reward a server cannot score: it scores a call's samples together, or keeps state across calls."""


def unservable_parts(reward, path: str = "reward") -> list[str]:
    """``"<config path> (<class>)"`` of ``reward`` and of each component of a mix inside it that scores the samples
    of a call together (``scores_together``; a mix that z-scores its terms over the call) or keeps state across
    calls (a ``state_dict`` of its own, not a module's weights)."""
    if isinstance(reward, WeightedReward):
        inside = [part for name, component in reward.components.items()
                  for part in unservable_parts(component, f"{path}.components.{name}")]
        return ([f"{path} (WeightedReward, normalize=true)"] if reward.normalize else []) + inside
    own = getattr(type(reward), "state_dict", Reward.state_dict)
    keeps_state = own not in (Reward.state_dict, torch.nn.Module.state_dict)
    return [f"{path} ({type(reward).__name__})"] if getattr(reward, "scores_together", False) or keeps_state else []


def module_sums(reward, path: str = "reward") -> dict[str, torch.Tensor]:
    """``{"<config path>.<tensor name>": [2] (sum, sum of squares, float64)}`` of the floating-point weights and
    buffers of ``reward`` where it is an ``nn.Module``, else of the modules it holds as attributes, and so of each
    component of a mix inside it: what tells a module that changed as it scored, without a copy of its weights."""
    if isinstance(reward, WeightedReward):
        return {key: sums for name, component in reward.components.items()
                for key, sums in module_sums(component, f"{path}.components.{name}").items()}
    modules = ({path: reward} if isinstance(reward, torch.nn.Module) else
               {f"{path}.{key}": value for key, value in vars(reward).items() if isinstance(value, torch.nn.Module)})
    sums = {}  # on the CPU: a module that moves to the images' device as it scores is summed in one order
    for where, module in modules.items():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t = t.detach().cpu().double()
                sums[f"{where}.{name}"] = torch.stack([t.sum(), t.square().sum()])
    return sums


def check_servable(reward, name: str) -> None:
    """Raise :class:`UnservableReward` naming ``reward=<name>`` when some part of it cannot be served."""
    parts = unservable_parts(reward)
    if parts:
        raise UnservableReward(
            f"reward={name} cannot be served: it scores the samples of a call together or learns across calls "
            f"({', '.join(parts)}), while a remote client splits each batch into chunks that its servers score "
            "apart, and no checkpoint of the run saves what a server learns; run it in-process instead "
            f"(reward={name} in the run, not reward=remote), and serve only rewards that score each sample alone")


class RewardService:
    """One reward object, scored one request at a time on its own thread; ``queue`` counts the requests received and
    not yet answered (waiting for an upload slot, read, or scored). A reward that scores a call's samples together or
    keeps state is refused (:func:`check_servable`).

    At most ``max_uploads`` requests are held in memory at a time (their bodies read, decoded or scored; the
    rest wait unread), so the server holds at most ``max_uploads * max_bytes`` of request bodies; a body not
    received within ``body_timeout_s`` is answered 408.
    """

    def __init__(self, reward, name: str, target: str, device: str, token: str | None = None,
                 max_batch: int = 1024, max_bytes: int = 256 * 2**20, max_uploads: int = 4,
                 body_timeout_s: float = 60.0):
        check_servable(reward, name)
        self.reward, self.name, self.target, self.device = reward, name, target, torch.device(device)
        self.token, self.max_batch, self.max_bytes = token, max_batch, max_bytes
        self.max_uploads, self.body_timeout_s = max_uploads, body_timeout_s
        self.uploads = asyncio.Semaphore(max_uploads)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reward")
        self.queue = 0
        self.served = 0
        self.components: set[str] = set()

    def score(self, images: torch.Tensor, targets: torch.Tensor | None, meta: dict) -> dict:
        """The reward on ``images``/``targets`` ``[N, C, H, W]`` (moved to the device) -> the response JSON."""
        meta = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in meta.items()}
        with torch.no_grad():
            scores, components = self.reward(images.to(self.device),
                                              None if targets is None else targets.to(self.device), meta)  # [N]
        self.components.update(components)
        self.served += 1
        return encode_scores(scores, components)

    def warm_up(self, shape: tuple[int, ...]) -> None:
        """Score random images and targets of ``shape`` once: fails early, and learns the component names. Its meta
        holds what a run's rollout may send (class 0 asked, 1 decoding step, the prompt ``"a zero"``), so that a
        reward reading any of them (``efficiency``, ``compositional``) is served."""
        n = shape[0]
        images = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1  # [N, C, H, W]
        meta = {"labels": torch.zeros(n, dtype=torch.long), "steps": torch.ones(n, dtype=torch.long),
                "prompts": ["a zero"] * n}
        before = module_sums(self.reward)
        self.score(images, images.flip(0), meta)
        moved = [name for name, sums in module_sums(self.reward).items()  # a module built as it scores: not compared
                 if name in before and not torch.allclose(sums, before[name], rtol=0.0, atol=0.0, equal_nan=True)]
        if moved:  # a module that trains itself as it scores, or a batch norm in train mode: state nothing saves
            raise UnservableReward(
                f"reward={self.name} cannot be served: scoring the warm-up batch changed its weights or buffers "
                f"({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}), so it learns across calls, and no "
                f"checkpoint of the run saves what a server learns; run it in-process instead (reward={self.name} "
                "in the run, not reward=remote), or put its modules in eval mode and freeze them")
        self.served = 0

    async def read_body(self, request: Request) -> bytes:
        """The request body; ``WireError(408)`` when it is not all received within ``body_timeout_s``."""
        try:
            return await asyncio.wait_for(self.read_limited(request), self.body_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11, two on 3.10
            raise WireError(408, f"request body not received within {self.body_timeout_s:g} s of this server's "
                                 "--body-timeout") from None

    async def read_limited(self, request: Request) -> bytes:
        """The request body, or ``WireError(413)`` as soon as it is over ``max_bytes``."""
        declared = request.headers.get("content-length", "")
        too_large = WireError(413, f"request body over this server's limit of {self.max_bytes} bytes (--max-bytes)")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_bytes:
                raise too_large
        return bytes(body)


def create_app(service: RewardService) -> FastAPI:
    """Every route requires ``Authorization: Bearer <token>`` when the service has a token."""

    def authorize(request: Request) -> None:
        error = auth_error(request.headers.get("authorization"), service.token)
        if error:
            raise HTTPException(*error)

    app = FastAPI(title="rlar reward server", dependencies=[Depends(authorize)], docs_url=None, redoc_url=None,
                  openapi_url=None)  # no unauthenticated schema pages

    @app.get("/health")
    def health() -> dict:
        return {"ready": True, "model": service.name, "device": str(service.device), "queue": service.queue,
                "served": service.served}

    @app.get("/info")
    def info() -> dict:
        return {"reward": service.name, "target": service.target, "components": sorted(service.components),
                "version": version("rlar"), "max_batch": service.max_batch, "max_bytes": service.max_bytes,
                "max_uploads": service.max_uploads, "body_timeout_s": service.body_timeout_s}

    @app.post("/score")
    async def score(request: Request):
        service.queue += 1
        try:
            async with service.uploads:  # the body is read only when a slot is free: memory stays bounded
                return await read_and_score(request)
        finally:
            service.queue -= 1

    async def read_and_score(request: Request):
        try:
            images, targets, meta = decode_request(await service.read_body(request), service.max_batch)
        except WireError as e:
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        try:
            loop = asyncio.get_running_loop()
            return JSONResponse(await loop.run_in_executor(service.executor, service.score, images, targets, meta))
        except Exception as e:  # the reward's own failure: logged here, a one-line reason to the client
            log.exception("reward failed on a batch of shape %s", list(images.shape))
            return JSONResponse({"detail": f"reward failed: {type(e).__name__}: {e}"}, status_code=500)

    return app
