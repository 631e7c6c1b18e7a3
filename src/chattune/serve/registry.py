"""The models a server offers: one loaded base model per distinct base, one name per target.

Run dirs over the same base share one model in memory: the first adapter loads with
`ChatModel.load` (a PeftModel), the others join it (`rundir.join_for_inference`), and `activate`
switches between them (`set_adapter`, or `disable_adapter` for the plain base) under a lock.
A request's `model` field is only ever looked up among these names; it never opens a path.
A shared base loads in the precision its targets agree on (model.load.inference_precision each, --dtype
overriding), or in fp32 when they differ: fp32 serves a bf16-trained adapter within bf16's rounding,
where bf16 would add that rounding to an fp32-trained one.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from chattune import rundir
from chattune.adapter_base import check_adapter_base
from chattune.infer.chat import ChatModel, run_row_spec
from chattune.models import resolve_model


class RegistryError(ValueError):
    """Targets that cannot be served together (duplicate names, unknown targets)."""


@dataclass
class Target:
    spec: str
    name: str
    base_key: tuple
    run: rundir.RunDir | None = None


@dataclass
class ModelGroup:
    """One model in memory and the adapters loaded into it."""

    model: object
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> peft adapter name
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Served:
    name: str
    chat: ChatModel  # its own tokenizer, system prompt and stop ids; the group's model
    group: ModelGroup
    adapter: str | None  # None: the group's model as loaded, or the bare base of a PeftModel
    created: int = 0


class Registry:
    def __init__(self, served: dict[str, Served]):
        self.served = served

    def names(self) -> list[str]:
        return list(self.served)

    def get(self, name: str) -> Served | None:
        return self.served.get(name)

    @contextlib.contextmanager
    def activate(self, name: str):
        """Hold the group's lock with `name`'s adapter active (or all adapters off)."""
        item = self.served[name]
        group = item.group
        with group.lock:
            if item.adapter is not None:
                group.model.set_adapter(item.adapter, inference_mode=True)
                yield item
            elif group.adapters:
                with group.model.disable_adapter():
                    yield item
            else:
                yield item


def served_name(spec: str) -> str:
    path = Path(spec)
    return path.resolve().name if path.is_dir() else spec


def describe(spec: str) -> Target:
    """Where a target's base model lives, read without loading any weights."""
    if rundir.is_run_dir(spec):
        run = rundir.open_run_dir(spec)
        m = run.config().model
        quant = (m.quantize, m.quant_type, m.double_quant) if m.quantize != "none" else ("none",)
        key = (resolve_model(m.name, m.revision), m.revision, m.trust_remote_code, quant)  # QLoRA: its own base
        check_adapter_base(run.adapter, key[0])
        return Target(spec, served_name(spec), key, run)
    return Target(spec, served_name(spec), (resolve_model(spec), None, False, ("none",)))


def plan(specs: list[str]) -> list[Target]:
    targets = [describe(spec) for spec in specs]
    seen: dict[str, str] = {}
    for t in targets:
        if t.name in seen:
            raise RegistryError(
                f"two targets would be served as {t.name!r}: {seen[t.name]} and {t.spec}; "
                "rename one folder"
            )
        seen[t.name] = t.spec
    return targets


def target_precision(t: Target, device: str, dtype: str = "auto") -> str:
    """The precision `t` alone would load in (run dir: as it trained; see model.load.inference_precision)."""
    from chattune.model.load import inference_precision

    if t.run is None:
        return inference_precision(None, device, dtype)
    return inference_precision(t.run.config(), device, dtype, recorded=t.run.summary().get("precision"))


def group_precisions(targets: list[Target], device: str, dtype: str = "auto") -> dict[tuple, str]:
    """Per base: the precision its targets agree on, else fp32."""
    wanted: dict[tuple, set[str]] = {}
    for t in targets:
        wanted.setdefault(t.base_key, set()).add(target_precision(t, device, dtype))
    return {key: choices.pop() if len(choices) == 1 else "fp32" for key, choices in wanted.items()}


def load_registry(specs: list[str], device: str = "cpu", dtype: str = "auto") -> Registry:
    """Load every target: `dtype` is --dtype (auto: per base, see group_precisions)."""
    import time

    targets = plan(specs)
    precisions = group_precisions(targets, device, dtype)
    groups: dict[tuple, ModelGroup] = {}
    served: dict[str, Served] = {}
    created = int(time.time())
    # Run dirs first so a plain base target can join the PeftModel that already holds it.
    for t in sorted(targets, key=lambda t: t.run is None):
        group = groups.get(t.base_key)
        if t.run is not None:
            chat, adapter = _load_run(t, group, device, precisions[t.base_key])
            if group is None:
                group = groups[t.base_key] = ModelGroup(chat.model)
            group.adapters[t.name] = adapter
            served[t.name] = Served(t.name, chat, group, adapter, created)
        elif group is not None:
            chat = _chat_on(group.model, t.spec)
            served[t.name] = Served(t.name, chat, group, None, created)
        else:
            chat = ChatModel.load(t.spec, device=device, dtype=precisions[t.base_key])
            groups[t.base_key] = group = ModelGroup(chat.model)
            served[t.name] = Served(t.name, chat, group, None, created)
    return Registry({t.name: served[t.name] for t in targets})


def _load_run(t: Target, group: ModelGroup | None, device: str, dtype: str) -> tuple[ChatModel, str]:
    """A ChatModel for the run; loads the base (in `dtype`) only for the first run of a group."""
    if group is None:
        chat = ChatModel.load(t.spec, device=device, dtype=dtype)
        return chat, chat.model.active_adapter
    from chattune.data.templates import stop_token_ids

    adapter = f"adapter{len(group.adapters)}"
    loaded = rundir.join_for_inference(t.run.path, group.model, adapter, t.base_key[0])
    stops = stop_token_ids(loaded.tokenizer, getattr(loaded.model, "generation_config", None))
    return ChatModel(loaded.model, loaded.tokenizer, loaded.cfg.data.system, stops, run_row_spec(t.run.path)), adapter


def _chat_on(model, tokenizer_source: str, trust_remote_code: bool = False) -> ChatModel:
    from chattune.data.templates import stop_token_ids
    from chattune.model.load import open_tokenizer

    source = tokenizer_source if Path(tokenizer_source).is_dir() else resolve_model(tokenizer_source)
    tokenizer = open_tokenizer(source, trust_remote_code=trust_remote_code)
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    return ChatModel(model, tokenizer, None, stops)
