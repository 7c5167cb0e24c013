"""An http LLM judge that writes a line to ``log`` each time it closes: whether its client's request
threads have ended and every connection pool it opened is closed ("closed"), else "open"."""

from pathlib import Path

from actors.llm_judge import LLMJudge


class ClosingJudge(LLMJudge):
    untracked_args = (*LLMJudge.untracked_args, "log")  # what the test watches, not what decides a score

    def __init__(self, name: str = "judge", log: str = "", **args):
        super().__init__(name, **args)
        self.log = log

    def close(self) -> None:
        super().close()
        c = self.client
        adapters = [a for s in c._sessions for a in s.adapters.values()]
        done = c._pool._shutdown and adapters and all(len(a.poolmanager.pools) == 0 for a in adapters)
        with Path(self.log).open("a") as f:
            f.write("closed\n" if done else "open\n")
