"""The one error bad data raises: `DataValidationError`, a list of `file: key: problem` lines."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

SHOWN_PER_KIND = 5


@dataclass(frozen=True)
class Problem:
    """One offender: the file it is in, the key (id, line or dataset) and what is wrong.

    `kind` groups offenders of the same sort for counting (for example "missing video").
    """

    file: str
    key: str
    problem: str
    kind: str = ""

    def line(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}"

    def group(self) -> tuple[str, str]:
        return (self.file, self.kind or self.problem)


def format_problems(problems: list[Problem], shown: int = SHOWN_PER_KIND) -> str:
    """Group problems by (file, kind); each group gives its count and its first `shown` lines."""
    groups: OrderedDict[tuple[str, str], list[Problem]] = OrderedDict()
    for problem in problems:
        groups.setdefault(problem.group(), []).append(problem)
    lines = []
    for (file, kind), members in groups.items():
        more = f", first {shown} shown" if len(members) > shown else ""
        lines.append(f"{file}: {kind}: {len(members)} offender(s){more}")
        lines.extend(f"  {p.line()}" for p in members[:shown])
    return "\n".join(lines)


class DataValidationError(ValueError):
    """Bad input data. `problems` holds every offender; the message counts them per kind."""

    def __init__(self, problems: list[Problem], context: str = ""):
        self.problems = list(problems)
        head = f"data validation failed{' for ' + context if context else ''}: "
        head += f"{len(self.problems)} problem(s)"
        super().__init__(head + "\n" + format_problems(self.problems))

    def __reduce__(self):
        return (_rebuild_error, (self.problems, str(self)))


def _rebuild_error(problems: list[Problem], message: str) -> DataValidationError:
    """Unpickle helper (Ray and DataLoader workers send exceptions between processes)."""
    error = DataValidationError.__new__(DataValidationError)
    error.problems = problems
    ValueError.__init__(error, message)
    return error
