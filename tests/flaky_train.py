"""A Ray Train loop for the failure tests: its first attempt dies after its first checkpoint (a
marker file remembers it, as a restarted worker would not), the next resumes from that checkpoint."""

from pathlib import Path


def flaky_loop(c: dict) -> None:
    import ray.train

    from raypref.train_checkpoint import load_state, report_step

    state, history, _ = load_state(ray.train.get_checkpoint())
    rank = ray.train.get_context().get_world_rank()
    marker = Path(c["marker"])

    def write(d):
        (Path(d) / "model").mkdir()
        (Path(d) / "model" / "weights.txt").write_text(str(len(history)))

    for step in range(state.get("step", 0) + 1, 3):
        history.append({"step": step, "attempt": len(marker.read_text().splitlines()) if marker.exists() else 0})
        report_step(rank, {"step": step}, history, {"step": step}, write)
        if not marker.exists():
            marker.write_text("died after step 1\n")
            raise RuntimeError("a worker died")
