"""Runs Autobahn cases against a WebSocket server with kosoku, for tests/autobahn.rs.

Usage: python3 tests/autobahn/run.py URL REPORT_DIR CASE...
Prints one line per case, `id<TAB>behavior<TAB>close behavior` (Autobahn's labels, such
as `NON-STRICT` or `WRONG CODE`), and writes kosoku's HTML and JSON reports to REPORT_DIR.
Judging the results is the Rust test's job: this exits 0 whenever the run finished.
"""

import asyncio
import sys

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports


async def main(url: str, report_dir: str, cases: list[str]) -> None:
    try:
        results = await run_fuzzingclient(url, cases)
    except FailureError as failure:
        # Raised when any case did not pass; it carries every result all the same.
        results = failure.results
    write_reports(results, report_dir)
    for result in results:
        print(result.case_id, result.behavior.value, result.behavior_close.value, sep="\t")


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
