"""Python 3.9 is the floor: nothing here may need a newer interpreter.

.ci/run also runs vermin; this test covers what vermin cannot see precisely: 3.10+ syntax
(ast.parse with feature_version) and `X | Y` in annotations, which 3.9 accepts as syntax but
fails on when the annotation is evaluated at definition time."""
import ast
import glob
import os
import unittest

from support import ROOT


def sources():
    yield os.path.join(ROOT, "fingerd.py")
    yield from sorted(glob.glob(os.path.join(ROOT, "tests", "*.py")))


class FloorTest(unittest.TestCase):
    def test_parses_as_python_3_9(self):
        for path in sources():
            with open(path, encoding="utf-8") as f:
                ast.parse(f.read(), path, feature_version=(3, 9))

    def test_no_union_operator_in_annotations(self):
        found = []
        for path in sources():
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            annotations = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    for arg in args.posonlyargs + args.args + args.kwonlyargs + \
                            [args.vararg, args.kwarg]:
                        if arg is not None and arg.annotation is not None:
                            annotations.append(arg.annotation)
                    if node.returns is not None:
                        annotations.append(node.returns)
                elif isinstance(node, ast.AnnAssign):
                    annotations.append(node.annotation)
            for annotation in annotations:
                for sub in ast.walk(annotation):
                    if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr):
                        found.append("%s:%d" % (os.path.relpath(path, ROOT), sub.lineno))
        self.assertEqual(found, [], "use Optional[...] / Union[...] for Python 3.9")

    def test_the_check_can_fail(self):
        tree = ast.parse("def f(x: int | None) -> str | None: pass")
        ops = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp)]
        self.assertEqual(len(ops), 2)
        with self.assertRaises(SyntaxError):
            ast.parse("match x:\n    case 1: pass\n", feature_version=(3, 9))


if __name__ == "__main__":
    unittest.main()
