"""One entry function per CLI subcommand; user-facing errors become a message and exit code 2."""

from __future__ import annotations

import sys
from argparse import Namespace

from rich.console import Console


def _user_errors() -> tuple[type[BaseException], ...]:
    from chattune.errors import user_errors

    return user_errors()


def run_command(args: Namespace) -> int:
    import warnings

    # peft asks transformers for a renamed attribute on every load; not actionable for users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    from chattune.cli_flags import check_flags
    from chattune.errors import CAUGHT, one_line

    handler = HANDLERS[args.command]
    try:
        check_flags(args)  # a flag's range: before any work
        return handler(args) or 0
    except CAUGHT as err:  # the error boundary (errors.py): bad input is one line
        if (message := one_line(err)) is None:
            raise
        from chattune.training.distributed import is_main

        if is_main():  # under torchrun every rank fails alike; say it once
            from rich.markup import escape  # "[question, answer]" in a message is text, not markup

            Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                                       soft_wrap=True)
        return 2


def cmd_config(args: Namespace) -> int:
    from chattune.config import load_config

    if getattr(args, "reference", False):
        if args.config or args.overrides:
            Console(stderr=True).print("[bold red]error:[/] --reference prints every key's default; give no CONFIG")
            return 2
        from chattune.reference import config_markdown

        print(config_markdown(), end="")
        return 0
    print(load_config(*_config_and_overrides(args)).to_yaml(), end="")
    return 0


def _config_and_overrides(args: Namespace) -> tuple[str | None, list[str]]:
    """`chattune train key=value ...` without a CONFIG: the first override is not a file name."""
    import os

    if args.config and "=" in args.config and not os.path.exists(args.config):
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def cmd_train(args: Namespace) -> int:
    from chattune.api import train
    from chattune.config import load_config

    cfg = load_config(*_config_and_overrides(args))
    if getattr(args, "nproc", None) is not None:
        from chattune.config import ConfigError
        from chattune.model.load import pick_device
        from chattune.training import distributed
        from chattune.training.monitor import wants_eval_loop

        if args.nproc < 1:
            raise ConfigError("--nproc must be at least 1")
        # fail here, not in N processes
        distributed.check_engine(cfg, wants_eval_loop(cfg), pick_device(cfg.train.device), launching=True)
        distributed.launch(args.nproc, args.argv)  # does not return: this process becomes torchrun
    # imports transformers, so only after the config checks above
    from chattune.training.display import TrainingDisplay, quiet_libraries
    from chattune.training.interrupt import TrainingInterrupted

    quiet = getattr(args, "quiet", False)
    if quiet:
        quiet_libraries()  # no loading bars or library warnings either
    display = TrainingDisplay(getattr(args, "log_format", "auto"), quiet=quiet)
    try:
        train(cfg, resume=getattr(args, "resume", None), if_exists="error",
              allow_data_change=getattr(args, "allow_data_change", False), callbacks=(display,))
    except TrainingInterrupted as stop:
        return _report_interrupted(stop, getattr(args, "argv", None) or ["train", *filter(None, [args.config]), *args.overrides])
    return 0


def _report_interrupted(stop, argv: list[str]) -> int:
    """Print where the run stopped and the exact command that continues it; 128 + signal."""
    import os

    from chattune.training.distributed import is_main, world_size
    from chattune.training.interrupt import resume_command

    single_machine = os.environ.get("LOCAL_WORLD_SIZE") == str(world_size())
    if world_size() > 1 and single_machine and not any(a.startswith("--nproc") for a in argv):
        argv = [*argv, "--nproc", str(world_size())]  # torchrun's workers do not see the launcher's --nproc
    if is_main():
        console = Console(stderr=True)
        console.print(f"[bold yellow]interrupted[/] {stop}", highlight=False)
        console.print("continue with:", highlight=False)
        console.print(f"  {resume_command(argv, stop.run_dir)}", highlight=False, soft_wrap=True)
    return stop.exit_code


def _settings(args: Namespace):
    from chattune.infer.chat import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)


def _device_and_dtype(args: Namespace) -> tuple[str, str]:
    """--device resolved, and --dtype as given; a warning when --dtype forces a precision this CPU emulates."""
    from chattune.model.load import pick_device, slow_precision_warning

    device = pick_device(args.device)
    if warning := slow_precision_warning(args.dtype, device, setting="--dtype"):
        Console(stderr=True).print(f"[yellow]warning[/]: {warning}", highlight=False)
    return device, args.dtype


def cmd_chat(args: Namespace) -> int:
    from chattune.api import load
    from chattune.infer.chat import repl

    device, dtype = _device_and_dtype(args)
    chat = load(args.target, device=device, dtype=dtype)
    if args.system:
        chat.system = args.system
    settings = _settings(args)
    if args.prompt is not None:
        for piece in chat.stream([{"role": "user", "content": args.prompt}], settings):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    repl(chat, settings)
    return 0


def cmd_demo(args: Namespace) -> int:
    from chattune.demo import run_demo
    from chattune.training.interrupt import TrainingInterrupted

    try:
        return run_demo(args.config, args.overrides)
    except TrainingInterrupted as stop:  # continue the training part with `chattune train`
        return _report_interrupted(stop, ["train", *filter(None, [args.config]), *args.overrides])


def cmd_fetch(args: Namespace) -> int:
    from chattune.models import fetch_builtin

    Console().print(f"[green]ready[/] {fetch_builtin(args.model, convert=not args.no_convert)}")
    return 0


HANDLERS = {"train": cmd_train, "chat": cmd_chat, "demo": cmd_demo, "config": cmd_config, "fetch": cmd_fetch}


def cmd_export(args: Namespace) -> int:
    from chattune.api import export
    from chattune.exporting.merge import ExportError
    from chattune.training.memory import EXPORT_MMAP_THRESHOLD_KB, release_freed_tensors

    release_freed_tensors(EXPORT_MMAP_THRESHOLD_KB)  # this process ends with the export (training/memory.py)
    try:
        export(args.run_dir, args.out, args.format, gguf_dtype=args.gguf_dtype, tolerance=args.tolerance,
               force=args.force, dtype=args.dtype, ollama=args.ollama)
    except ExportError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        return 1
    return 0


def cmd_predict(args: Namespace) -> int:
    from chattune.infer.predict import run_predict

    if args.batch_size < 1 or args.max_new_tokens < 1:
        Console(stderr=True).print("[bold red]error:[/] --batch-size and --max-new-tokens must be at least 1")
        return 2
    device, dtype = _device_and_dtype(args)
    run_predict(args.target, args.data, args.out, _settings(args), args.batch_size, device, dtype=dtype)
    return 0


HANDLERS["export"] = cmd_export
HANDLERS["predict"] = cmd_predict


def cmd_data(args: Namespace) -> int:
    from chattune.api import inspect_data

    config, overrides = _config_and_overrides(args)
    return 1 if inspect_data(config, overrides=overrides, examples=args.n, console=Console()).report.errors else 0


HANDLERS["data"] = cmd_data


def cmd_eval(args: Namespace) -> int:
    from chattune.api import evaluate
    from chattune.eval.runner import print_summary

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    device, dtype = _device_and_dtype(args)
    options = dict(labels=labels, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, device=device,
                   dtype=dtype, settings=args.set)
    if args.retrieval_ablation:
        from chattune.api import retrieval_ablation
        from chattune.eval.ablation import print_ablation

        print_ablation(retrieval_ablation(args.target, args.data, args.metric, **options), Console())
        return 0
    result = evaluate(args.target, args.data, args.metric, out=args.out, like=args.like,
                      retrieval=not args.no_retrieval, **options)
    print_summary(result, Console())
    return 0


def cmd_report(args: Namespace) -> int:
    from chattune.report.html import write_report

    Console().print(f"[green]wrote[/] {write_report(args.run_dir, args.out)}")
    return 0


def cmd_runs(args: Namespace) -> int:
    from chattune.report.runs import print_runs

    print_runs(args.dir, Console())
    return 0


def cmd_compare(args: Namespace) -> int:
    from chattune.config import ConfigError
    from chattune.report.runs import compare_runs

    if len(args.run_dirs) < 2:
        raise ConfigError(f"compare needs two or more run dirs, got {len(args.run_dirs)}: {' '.join(args.run_dirs)}")

    Console().print(f"[green]wrote[/] {compare_runs(args.run_dirs, args.out)}")
    return 0


HANDLERS.update(eval=cmd_eval, report=cmd_report, runs=cmd_runs, compare=cmd_compare)


def _server_key(args: Namespace, command: str) -> str | None:
    """--api-key or CHATTUNE_API_KEY; refused without one beyond loopback unless --no-auth (warned)."""
    import os

    from chattune.serve.binding import check_binding

    api_key = args.api_key or os.environ.get("CHATTUNE_API_KEY") or None
    if warning := check_binding(command, args.host, api_key, getattr(args, "no_auth", False)):
        Console(stderr=True).print(f"[bold yellow]warning[/]: {warning}", highlight=False, soft_wrap=True)
    return api_key


def cmd_serve(args: Namespace) -> int:
    import uvicorn

    from chattune.serve.app import create_app
    from chattune.serve.registry import RegistryError, load_registry

    for flag, value in (("--max-tokens", args.max_tokens), ("--max-queue", args.max_queue)):
        if value < 1:
            Console(stderr=True).print(f"[bold red]error:[/] {flag} must be at least 1")
            return 2
    api_key = _server_key(args, "serve")  # before any model loads
    try:
        registry = load_registry(args.targets, *_device_and_dtype(args))
    except RegistryError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    app = create_app(registry, api_key=api_key, max_tokens=args.max_tokens, max_queue=args.max_queue)
    Console(stderr=True).print(
        f"serving {', '.join(registry.names())} on http://{args.host}:{args.port}/ "
        f"({'API key required' if api_key else 'no API key'})", highlight=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


HANDLERS["serve"] = cmd_serve


def cmd_ui(args: Namespace) -> int:
    import uvicorn

    from chattune.model.load import pick_device
    from chattune.ui.app import create_ui_app

    api_key = _server_key(args, "ui")
    app = create_ui_app(args.runs_dir, api_key=api_key, device=pick_device(args.device))
    Console(stderr=True).print(f"chattune ui on http://{args.host}:{args.port}/ (runs in {args.runs_dir}; "
                               f"{'API key required' if api_key else 'no API key'})", highlight=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


HANDLERS["ui"] = cmd_ui


def cmd_env(args: Namespace) -> int:
    import json

    from chattune.env import collect, to_markdown

    report = collect()
    print(json.dumps(report, indent=1) + "\n" if args.json else to_markdown(report), end="")
    return 0


HANDLERS["env"] = cmd_env
