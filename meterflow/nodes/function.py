"""function: run your own Python code on each message (Node-RED's function node).

::

    - id: count
      type: function
      outputs: [small, big]          # or a number (default 1); names can key 'wires'
      setup: |                       # runs once at start; what it defines, code can use
        import statistics
        LIMIT = 100
      code: |                        # the body of a function of msg, node, context, flow, global_ctx, env
        n = context.get("n", 0) + 1
        context.set("n", n)
        if msg["payload"] > LIMIT:
            node.warn(f"big reading #{n}")
            return [None, msg]
        return msg                     # or None (nothing), or a list with one entry per output
      cleanup: |                     # runs once at stop
        node.log("bye")
      wires: {small: [store], big: [alert]}

What the code sees:

* ``msg``: the message (a dict).  ``return msg`` sends it on output 0; ``return None``
  sends nothing; ``return [a, b]`` sends ``a`` on output 0 and ``b`` on output 1, an entry
  may be None or a list of several messages.  Every sent message keeps the input's
  ``_msgid``.
* ``node``: ``node.send(msg_or_list, clone=True)`` sends now (the first message is copied,
  so changing ``msg`` afterwards does not change what was sent); ``node.warn/log/debug``
  (text), ``node.error(err, msg=None)`` (with a msg it reaches catch nodes),
  ``node.status(fill=, shape=, text=)`` (or a dict or a text), ``node.done()``,
  ``node.id/name/outputs``, ``await node.sleep(seconds)`` and
  ``node.call_later(seconds, fn, *args)`` (the engine's clock; cancelled at stop).
* ``context`` (this node's context: ``get(key, default=None)``, ``set(key, value)``,
  ``delete``, ``keys``; also ``context.flow`` and ``context.global_``), ``flow`` and
  ``global_ctx`` (the flow and global contexts), ``env.get(NAME, default=None)``.
* ``FlowError`` (``raise FlowError("...", kind="auth")`` picks the error kind) and
  ``clone`` (a deep copy of a message).

When the code uses ``await`` it runs as a coroutine (later messages do not wait for it).
When it calls ``node.done()`` itself (written literally), completion waits for that call;
otherwise a message is done when the code returns.  An exception goes to catch nodes as
an error of kind ``runtime`` (or the ``FlowError``'s kind) whose text names the line;
unlike Node-RED, ``msg.error`` is left alone, so the catch loop guard also stops a
catch -> function -> raise loop.  Syntax errors are reported by ``meterflow check``.

The code is trusted configuration, not a sandbox: it runs in the engine's process with
full Python.  There is no per-call time limit (Node-RED's ``timeout``): synchronous
Python cannot be interrupted without threads, so a code that loops forever blocks the
engine.  Wait with ``await node.sleep()``, never ``time.sleep``.

JavaScript (Node-RED's code, unchanged) is the ``function-js`` node type (the
``meterflow[js]`` extra); ``language: javascript`` here is reported by ``meterflow check``.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import os
from typing import Any

from ..errors import FlowError, kind_of
from ..message import clone
from ..node import Node
from ..schema import Field

#: ``language`` values.  Python runs here; JavaScript is the separate ``function-js`` node type
#: (module ``function_js``, the ``meterflow[js]`` extra), so ``language: javascript`` is only
#: recognised to say so.  A new language would get a runner with :class:`PythonRunner`'s interface
#: (``uses_done``, ``async start()``, ``run(msg)``, ``async stop()``) chosen in :meth:`Function.setup`.
LANGUAGES = ("python", "javascript")


def _javascript_problem() -> str:
    from importlib.util import find_spec

    if find_spec("py_mini_racer") is None:
        return ("javascript function nodes need the meterflow[js] extra (pip install 'meterflow[js]');"
                " then write the node as type: function-js")
    return "JavaScript code runs in a function-js node: write type: function-js instead of language: javascript"


PARAMS = ("msg", "node", "context", "flow", "global_ctx", "env")
_FN_NAME = "__meterflow_function__"


def env_value(node: Node, name: str) -> str | None:
    """An environment setting as Node-RED's ``env.get``: node/flow names, then the process env."""
    if name == "NR_NODE_ID":
        return node.id
    if name == "NR_NODE_NAME":
        return node.name
    if name == "NR_FLOW_NAME":
        return node.flow.name
    return os.environ.get(name)


class Function(Node):
    type = "function"
    summary = "Run Python code on each message (Node-RED's function node)"
    schema = {
        "code": Field("str", "the body of a function of msg, node, context, flow, global_ctx, env", default="return msg"),
        "language": Field("str", "python (for JavaScript use the function-js node type)", choices=LANGUAGES,
                          default="python"),
        "outputs": Field("int|list", "number of outputs, or a list of output names", default=1),
        "setup": Field("str", "code run once at start (its names are visible to code)", default=""),
        "cleanup": Field("str", "code run once at stop", default=""),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        outputs = config.get("outputs", 1)
        if isinstance(outputs, list):
            return [str(o) for o in outputs]
        return [str(i) for i in range(outputs if isinstance(outputs, int) else 1)]

    @classmethod
    def check(cls, config: dict) -> list:
        problems: list = []
        outputs = config.get("outputs", 1)
        if isinstance(outputs, int) and outputs < 0:
            problems.append((("outputs",), "outputs cannot be negative"))
        if isinstance(outputs, list):
            for i, name in enumerate(outputs):
                if not isinstance(name, str) or not name:
                    problems.append((("outputs", i), "output names are non-empty strings"))
                elif outputs.index(name) != i:
                    problems.append((("outputs", i), f"output name {name!r} is used twice"))
        if config.get("language", "python") == "javascript":
            return problems + [(("language",), _javascript_problem())]
        for key in ("code", "setup", "cleanup"):
            text = config.get(key) or ""
            try:
                if key == "code":
                    compile_body(text, f"<{key}>")
                else:
                    compile_block(text, f"<{key}>")
            except SyntaxError as e:
                problems.append(((key,), syntax_message(e, key)))
        return problems

    def setup(self) -> None:
        self.runner = PythonRunner(self)
        if self.runner.uses_done:
            self.auto_done = False  # the code calls node.done() itself (an instance override)
        self._timers: set = set()

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        self._timers.clear()
        await self.runner.stop()

    def on_input(self, msg: dict):
        return self.runner.run(msg)

    # ---- shared by every language: Node-RED's sendResults ------------------------------------
    def results(self, result: Any, msg: dict | None) -> Any:
        """Normalise what code returned or sent: tuples are lists; every message gets the input's _msgid."""
        result = _lists(result)
        if msg is not None and "_msgid" in msg:
            _stamp(result, msg["_msgid"])
        return result

    def send_from_code(self, msgs: Any, copy: bool, msg: dict | None) -> None:
        msgs = _lists(msgs)
        if msgs is None:
            return
        if copy:
            msgs = _clone_first(msgs)
        self.send(self.results(msgs, msg))


def _lists(v: Any) -> Any:
    if isinstance(v, tuple):
        v = list(v)
    if isinstance(v, list):
        return [list(x) if isinstance(x, tuple) else x for x in v]
    return v


def _stamp(result: Any, msgid: str) -> None:
    if isinstance(result, dict):
        result["_msgid"] = msgid
    elif isinstance(result, list):
        for out in result:
            for m in out if isinstance(out, list) else (out,):
                if isinstance(m, dict):
                    m["_msgid"] = msgid


def _clone_first(msgs: Any) -> Any:
    """Node-RED's ``node.send(msgs)``: the first message is copied (later ones the runtime copies)."""
    if isinstance(msgs, dict):
        return clone(msgs)
    if not isinstance(msgs, list):
        return msgs
    out = list(msgs)
    for i, entry in enumerate(out):
        if isinstance(entry, dict):
            out[i] = clone(entry)
            return out
        if isinstance(entry, list):
            for j, m in enumerate(entry):
                if isinstance(m, dict):
                    out[i] = entry[:j] + [clone(m)] + entry[j + 1:]
                    return out
    return out


# ---- Python --------------------------------------------------------------------------------------
def syntax_message(e: SyntaxError, key: str) -> str:
    where = f"line {e.lineno} of the {key}" if e.lineno else f"the {key}"
    return f"Python syntax error on {where}: {e.msg}"


def _top_level(nodes: list[ast.stmt]):
    """Nodes of the code's own body, not of functions, lambdas or classes it defines."""
    stack: list[ast.AST] = list(nodes)
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                stack.append(child)


def compile_body(code: str, filename: str) -> tuple:
    """Compile ``code`` as the body of ``def f(msg, node, context, flow, global_ctx, env)``.

    Line numbers stay those of ``code``.  Returns (code object, is_async, uses_done)."""
    tree = ast.parse(code, filename, "exec")
    own = list(_top_level(tree.body))
    for n in own:
        if isinstance(n, ast.Yield | ast.YieldFrom):
            raise SyntaxError("'yield' is not allowed: return a list to send several messages",
                              (filename, n.lineno, n.col_offset + 1, None))
    is_async = any(isinstance(n, ast.Await | ast.AsyncFor | ast.AsyncWith) for n in own)
    uses_done = any(isinstance(n, ast.Attribute) and n.attr == "done" and isinstance(n.value, ast.Name)
                    and n.value.id == "node" for n in ast.walk(tree))
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg=p) for p in PARAMS], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    fn = kind(name=_FN_NAME, args=args, body=tree.body or [ast.Pass()], decorator_list=[], returns=None)
    if "type_params" in kind._fields:  # Python 3.12+
        fn.type_params = []
    fn.lineno, fn.col_offset = 1, 0
    module = ast.fix_missing_locations(ast.Module(body=[fn], type_ignores=[]))
    return compile(module, filename, "exec"), is_async, uses_done


def compile_block(code: str, filename: str):
    """Setup/cleanup code: module-level statements, ``await`` allowed."""
    return compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


class _NodeContext:
    """The node context as the code sees it, with ``.flow`` and ``.global_`` as in Node-RED."""

    __slots__ = ("_ctx", "flow", "global_")

    def __init__(self, ctx, flow, global_):
        self._ctx, self.flow, self.global_ = ctx, flow, global_

    def get(self, key: str, default: Any = None) -> Any:
        return self._ctx.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._ctx.set(key, value)

    def delete(self, key: str) -> None:
        self._ctx.delete(key)

    def keys(self) -> list[str]:
        return self._ctx.keys()

    def mark_changed(self) -> None:
        self._ctx.mark_changed()


class _Env:
    __slots__ = ("_node",)

    def __init__(self, node: Node):
        self._node = node

    def get(self, name: str, default: Any = None) -> Any:
        v = env_value(self._node, name)
        return default if v is None else v


class NodeApi:
    """``node`` inside the code, bound to the message being handled (None in setup/cleanup)."""

    __slots__ = ("_node", "_msg")

    def __init__(self, node: Function, msg: dict | None):
        self._node, self._msg = node, msg

    id = property(lambda self: self._node.id)
    name = property(lambda self: self._node.name)
    outputs = property(lambda self: len(self._node.output_names(self._node.config)))

    def send(self, msgs: Any, clone: bool = True) -> None:
        self._node.send_from_code(msgs, clone, self._msg)

    def done(self, error: BaseException | str | None = None) -> None:
        if self._msg is None:
            return
        if error is not None:
            self._node.error(error, self._msg)  # Node-RED's done(err): the catch path, no completion
        else:
            self._node.done(self._msg)

    def error(self, err: BaseException | str, msg: dict | None = None) -> None:
        self._node.error(err, msg)

    def warn(self, text: Any) -> None:
        self._node.warn(str(text))

    def log(self, text: Any) -> None:
        self._node.log.info("[%s] %s", self._node.id, self._node.flow.engine.redact(str(text)))

    def debug(self, text: Any) -> None:
        self._node.log.debug("[%s] %s", self._node.id, self._node.flow.engine.redact(str(text)))

    def status(self, status: dict | str | None = None, **kw) -> None:
        if isinstance(status, dict):
            kw = {**status, **kw}
        elif status is not None:
            kw["text"] = status
        self._node.status(kw.get("fill"), kw.get("shape"), kw.get("text", ""))

    async def sleep(self, seconds: float) -> None:
        await self._node.clock.sleep(seconds)

    def call_later(self, seconds: float, fn, *args):
        node = self._node

        def fire():
            node._timers.discard(timer)
            try:
                fn(*args)
            except Exception as e:
                node.error(_wrap(e, node.runner.filenames), None)

        timer = node.clock.call_later(seconds, fire)
        node._timers.add(timer)
        return timer


def _wrap(e: BaseException, filenames: tuple[str, ...]) -> FlowError:
    """A FlowError naming the line of the code where ``e`` was raised (FlowErrors pass unchanged)."""
    from ..runtime import error_text

    if isinstance(e, FlowError):
        return e
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in filenames:
            line = tb.tb_lineno
        tb = tb.tb_next
    text = error_text(e)
    if line is None:
        return FlowError(text, kind=kind_of(e))
    wrapped = FlowError(f"{text} (line {line})", kind=kind_of(e), line=line)
    wrapped.__cause__ = e
    return wrapped


class PythonRunner:
    """Runs a function node's Python code: compiled once, one namespace shared by setup/code/cleanup."""

    def __init__(self, node: Function):
        self.node = node
        cfg = node.config
        self.filenames = tuple(f"<function {node.id} {key}>" for key in ("code", "setup", "cleanup"))
        code, self.is_async, self.uses_done = compile_body(cfg["code"], self.filenames[0])
        self.setup_code = compile_block(cfg["setup"], self.filenames[1]) if cfg["setup"].strip() else None
        self.cleanup_code = compile_block(cfg["cleanup"], self.filenames[2]) if cfg["cleanup"].strip() else None
        for filename, text in zip(self.filenames, (cfg["code"], cfg["setup"], cfg["cleanup"]), strict=True):
            # lets tracebacks in debug logs show the code's lines
            linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        flow_ctx, global_ctx = node.flow_context, node.global_context
        self.args = (_NodeContext(node.context, flow_ctx, global_ctx), flow_ctx, global_ctx, _Env(node))
        self.namespace: dict[str, Any] = {
            "__builtins__": builtins, "__name__": f"meterflow.function.{node.id}",
            "FlowError": FlowError, "clone": clone, "node": NodeApi(node, None),
            **dict(zip(PARAMS[2:], self.args, strict=True)),
        }
        exec(code, self.namespace)
        self.fn = self.namespace.pop(_FN_NAME)
        self.setup_error: str | None = None

    async def _block(self, code) -> None:
        result = eval(code, self.namespace)
        if result is not None and hasattr(result, "__await__"):
            await result

    async def start(self) -> None:
        if self.setup_code is None:
            return
        try:
            await self._block(self.setup_code)
        except Exception as e:
            err = _wrap(e, self.filenames)
            self.setup_error = str(err)
            raise FlowError(f"setup code failed: {err}", kind=err.kind) from None

    async def stop(self) -> None:
        if self.cleanup_code is None:
            return
        try:
            await self._block(self.cleanup_code)
        except Exception as e:
            self.node.error(FlowError(f"cleanup code failed: {_wrap(e, self.filenames)}"), None)

    def run(self, msg: dict) -> Any:
        if self.setup_error is not None:
            raise FlowError(f"message dropped: the setup code failed ({self.setup_error})")
        node = self.node
        try:
            result = self.fn(msg, NodeApi(node, msg), *self.args)
        except FlowError:
            raise  # the code chose the error and its kind
        except Exception as e:
            raise _wrap(e, self.filenames) from e
        if self.is_async:
            return self._finish(result, msg)
        return node.results(result, msg)

    async def _finish(self, coro, msg: dict) -> Any:
        try:
            result = await coro
        except FlowError:
            raise
        except Exception as e:
            raise _wrap(e, self.filenames) from e
        return self.node.results(result, msg)


NODE_TYPES = [Function]
