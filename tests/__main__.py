"""Run fingerd's test suite:  python3 -m tests  (from the project root).

Options: -v (one line per test), -k PATTERN (only matching tests), -x (stop at the first
failure).  Ends with the plain summary line "N passed, N failed, N skipped" and exits 1
when anything failed.  FINGERD=/usr/sbin/fingerd runs the black-box tests against an
installed program instead of ./fingerd.py.
"""
import argparse
import os
import sys
import unittest


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-k", dest="patterns", action="append", default=None)
    parser.add_argument("-x", "--failfast", action="store_true")
    parser.add_argument("modules", nargs="*", help="test modules, e.g. test_finger")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)           # test modules import support.py as a top-level module
    loader = unittest.TestLoader()
    if args.patterns:
        loader.testNamePatterns = ["*%s*" % p for p in args.patterns]
    if args.modules:
        suite = loader.loadTestsFromNames(m.replace(".py", "") for m in args.modules)
    else:
        suite = loader.discover(here, top_level_dir=here)
    runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1,
                                     failfast=args.failfast)
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    support = sys.modules.get("support")
    if support is not None and support.THREAD_DEATHS:
        print("threads that died of an exception (a loop let a failure escape):")
        for death in support.THREAD_DEATHS:
            print("  " + death)
        failed += 1
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    if result.skipped:
        reasons = sorted({reason for _, reason in result.skipped})
        print("skipped: " + "; ".join(reasons))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
