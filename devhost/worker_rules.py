"""The Python worker's indexing rules, checked here because the real Functions host applies them and this
development host otherwise would not: one violation and the worker indexes **no function at all** (the host
then serves nothing), while every local test still passes.

Written from reading the worker (Azure/azure-functions-python-worker @7e6acf36, the worker for Python < 3.13):
- `azure_functions_worker/loader.py` `index_function_app`: imports `function_app`, scans its top-level names for
  instances of `azure.functions.FunctionRegister` (FunctionApp, AsgiFunctionApp, WsgiFunctionApp; a Blueprint is
  not one), refuses a module with none or more than one, then calls `app.get_functions()` once.
- `azure_functions_worker/functions.py` `Registry.add_indexed_function`: per function, `typing.get_type_hints`
  (so every annotation must resolve at run time), binding directions, the `context` parameter, parameter names
  against binding names, each annotation against its binding's converter, and the return annotation.
- `azure_functions_worker/dispatcher.py` `index_functions`: the first error fails the whole metadata request.
The converters that accept or refuse an annotation are azure-functions' own (`azure.functions.get_binding_registry`,
Azure/azure-functions-python-library `azure/functions/meta.py`), so they are asked here too; the rules around
them are written from the behaviour read, not copied. Not covered: the HTTP-streaming (FastAPI) extension and
deferred-binding types (`azurefunctions-extensions-*`), which this app does not use.

Development tooling: the production app never imports this module.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions.decorators.core import BindingDirection

SCRIPT_FILE = "function_app.py"  # the worker's default PYTHON_SCRIPT_FILE_NAME
_RETURN = "$return"
_CONTEXT = "context"
# A binding type with no converter in azure-functions is handled as "generic" by the worker, which then treats it
# as having an implicit output (the return value), except for Durable Functions' client binding.
_GENERIC_WITHOUT_IMPLICIT_OUTPUT = "durableClient"


@dataclass(frozen=True)
class Violation:
    """One broken rule: the function (or the module), the rule's id and what the worker would say."""

    function: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"cannot load the {self.function} function: {self.message} [{self.rule}]"


class WorkerIndexingError(ValueError):
    """The Python worker would refuse to index this app, so the Functions host would serve no function."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        lines = "\n".join(f"  - {violation}" for violation in violations)
        super().__init__(
            f"the Azure Functions Python worker would index no function of this app ({len(violations)} "
            f"problem(s)):\n{lines}"
        )


# -- the module: exactly one function app ------------------------------------------------------------------------


def find_function_app(module: types.ModuleType) -> func.FunctionRegister:
    """The one FunctionApp (any FunctionRegister) defined at the top level of `module`, as the worker looks for
    it. Raises WorkerIndexingError when there is none or more than one (an imported one counts: the worker scans
    every top-level name).
    """
    found = [(name, value) for name, value in vars(module).items() if isinstance(value, func.FunctionRegister)]
    if len(found) == 1:
        return found[0][1]
    where = getattr(module, "__file__", None) or module.__name__
    if not found:
        message = f"no top-level FunctionApp instance in {where}"
    else:
        names = ", ".join(name for name, _ in found)
        message = f"more than one top-level FunctionApp instance in {where} ({names}); the worker needs exactly one"
    raise WorkerIndexingError([Violation(SCRIPT_FILE, "one-function-app", message)])


# -- each function ------------------------------------------------------------------------------------------------


def check_functions(functions: Iterable[Any]) -> None:
    """Check every function of `app.get_functions()` (call that once: it refuses a second call). Raises
    WorkerIndexingError listing every violation found.
    """
    violations = [violation for function in functions for violation in check_function(function)]
    if violations:
        raise WorkerIndexingError(violations)


def check_function(function: Any) -> list[Violation]:
    """The violations of one `azure.functions.decorators.core.Function` (empty when the worker would load it)."""
    name = str(function.get_function_name())
    user_function: Callable[..., Any] = function.get_user_function()
    bindings = list(function.get_bindings())

    def violation(rule: str, message: str) -> Violation:
        return Violation(name, rule, message)

    # The worker resolves every hint of the function up front: a name imported only under `if TYPE_CHECKING:`
    # (with `from __future__ import annotations`) raises NameError here and the whole app fails to index.
    try:
        hints = typing.get_type_hints(user_function)
    except Exception as exc:
        return [violation("type-hints", f"its type hints cannot be resolved at run time: {exc!r}")]

    found: list[Violation] = []
    bound: dict[str, Any] = {}
    returned: Any = None
    for binding in bindings:
        direction = binding.direction
        if direction == BindingDirection.INOUT.value:
            found.append(violation("binding-direction", f'binding {binding.name}: "inout" bindings are not supported'))
        if binding.name == _RETURN:
            if direction != BindingDirection.OUT.value:
                found.append(violation("binding-direction", '"$return" binding must have direction "out"'))
            returned = returned or binding
        else:
            bound[binding.name] = binding

    parameters = dict(inspect.signature(user_function).parameters)
    if _CONTEXT in parameters and _CONTEXT not in bound:
        parameters.pop(_CONTEXT)
        annotation = hints.get(_CONTEXT)
        if _CONTEXT in hints and not (isinstance(annotation, type) and annotation.__name__ == "Context"):
            found.append(
                violation(
                    "context-annotation",
                    f'the "context" parameter must be annotated azure.functions.Context, not {annotation!r}',
                )
            )

    unbound = sorted(set(parameters) - set(bound))
    if unbound:
        found.append(
            violation(
                "parameters-match-bindings",
                f"parameter(s) {unbound} are declared in Python but have no binding of that name "
                f"(bindings: {sorted(bound)}; only 'context' may be unbound)",
            )
        )
    missing = sorted(set(bound) - set(parameters))
    if missing:
        found.append(
            violation("parameters-match-bindings", f"binding(s) {missing} have no Python parameter of that name")
        )
    if unbound or missing:
        return found

    for parameter in parameters:
        if parameter in hints:
            problem = _parameter_problem(parameter, hints[parameter], bound[parameter])
            if problem is not None:
                found.append(violation(*problem))
    if returned is not None and "return" in hints:
        return_problem = _return_problem(hints["return"], str(returned.type))
        if return_problem is not None:
            found.append(violation("return-annotation", return_problem))
    return found


def _parameter_problem(parameter: str, annotation: Any, binding: Any) -> tuple[str, str] | None:
    """(rule, message) when the annotation of `parameter` does not fit its binding, else None."""
    binding_type = str(binding.type)
    is_out_annotation = _is_out(annotation)
    is_out_binding = binding.direction == BindingDirection.OUT.value
    python_type = annotation
    if is_out_annotation:
        arguments = typing.get_args(annotation)
        if len(arguments) != 1:
            return "annotation-matches-binding", f"binding {parameter} has an invalid Out annotation {annotation!r}"
        python_type = arguments[0]
    if not (isinstance(python_type, type) or _is_generic(python_type)):
        return "annotation-is-type", f"binding {parameter} has a non-type annotation {annotation!r}"
    if is_out_binding and not is_out_annotation:
        return (
            "out-direction",
            f'binding {parameter} has direction "out" but its annotation is not azure.functions.Out',
        )
    if is_out_annotation and not is_out_binding:
        return "out-direction", f'binding {parameter} has direction "in" but its annotation is azure.functions.Out'
    # str and bytes are accepted for any binding without an implicit output (the worker's "generic" binding).
    checked_as = "generic" if python_type in (str, bytes) and not _has_implicit_output(binding_type) else binding_type
    accepted = _accepts(checked_as, python_type, output=is_out_annotation)
    if accepted:
        return None
    return (
        "annotation-matches-binding",
        f'the type of binding {parameter} ("{binding_type}") does not match its Python annotation '
        f'"{_type_name(python_type)}"',
    )


def _return_problem(annotation: Any, binding_type: str) -> str | None:
    if _is_out(annotation):
        return "the return annotation must not be azure.functions.Out"
    if not isinstance(annotation, type):
        return f"the return annotation {annotation!r} is not a type (a union or Optional is refused; None is too)"
    if not _accepts(binding_type, annotation, output=True):
        return f'the return annotation "{_type_name(annotation)}" does not match the "{binding_type}" return binding'
    return None


# -- what azure-functions' converters accept ------------------------------------------------------------------------


def _converter(binding_type: str) -> Any:
    return func.get_binding_registry().get(binding_type)


def _has_implicit_output(binding_type: str) -> bool:
    converter = _converter(binding_type)
    if converter is None:
        return binding_type != _GENERIC_WITHOUT_IMPLICIT_OUTPUT
    check = getattr(converter, "has_implicit_output", None)
    return bool(check()) if check is not None else False


def _accepts(binding_type: str, python_type: Any, *, output: bool) -> bool:
    """Whether the converter for `binding_type` (or the generic one: str/bytes in, str/bytes/bytearray out)
    accepts `python_type`. An exception while checking counts as a refusal: it fails the worker's indexing too.
    """
    converter = None if binding_type == "generic" else _converter(binding_type)
    try:
        if converter is None:
            return bool(issubclass(python_type, (str, bytes, bytearray) if output else (str, bytes)))
        if output:
            return bool(converter.check_output_type_annotation(python_type))
        return bool(converter.check_input_type_annotation(python_type))
    except Exception:
        return False


# -- annotations ------------------------------------------------------------------------------------------------------


def _is_out(annotation: Any) -> bool:
    """`func.Out[T]` (or a class named Out): the worker recognises output parameters by that name."""
    origin = typing.get_origin(annotation)
    candidate = origin if origin is not None else annotation
    return isinstance(candidate, type) and candidate.__name__ == "Out"


def _is_generic(annotation: Any) -> bool:
    """A generic class or a `typing` alias of one (`typing.List[X]`), as the worker's typing_inspect judges it;
    unions, `Optional`, tuples, callables, `X | Y` and builtin aliases like `list[X]` are not.
    """
    if isinstance(annotation, type):
        return issubclass(annotation, typing.Generic)
    if type(annotation).__module__ != "typing":
        return False
    origin = typing.get_origin(annotation)
    return origin is not None and origin not in (typing.Union, tuple, typing.ClassVar, collections.abc.Callable)


def _type_name(python_type: Any) -> str:
    return str(getattr(python_type, "__name__", python_type))
