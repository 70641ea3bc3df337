"""The Python worker's indexing rules over the real `function_app` and over broken copies of its functions: each
rule the real Functions host enforces (and whose violation makes it serve no function at all) fails here first.
The rules are in devhost/worker_rules.py, which cites the worker source they were read from.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING

import azure.functions as func
import pytest

from devhost.worker_rules import Violation, WorkerIndexingError, check_function, check_functions, find_function_app

if TYPE_CHECKING:
    # Only type checkers see this import: at run time the name does not exist, as in a module that imports a
    # type under TYPE_CHECKING and uses it in a function signature.
    from azure.functions import HttpRequest as TypeCheckingOnlyRequest


def _only(app: func.FunctionApp) -> list[Violation]:
    """The violations of the single function of `app` (a fresh app: get_functions() runs once per app)."""
    (function,) = app.get_functions()
    return check_function(function)


def _health_app(handler: object) -> func.FunctionApp:
    """`handler` registered the way functions/health.py registers `health`."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)(handler)
    return app


# -- the real app -------------------------------------------------------------------------------------------------


def test_function_app_passes_every_worker_rule() -> None:
    import function_app

    module = importlib.reload(function_app)  # a fresh FunctionApp: get_functions() runs once per app
    app = find_function_app(module)
    functions = app.get_functions()
    violations = {f.get_function_name(): check_function(f) for f in functions}

    assert app is module.app
    assert functions, "function_app registers no function"
    assert {name: found for name, found in violations.items() if found} == {}
    check_functions([])  # nothing to refuse


def test_every_blueprint_function_is_checked_including_non_http_ones() -> None:
    import function_app

    functions = importlib.reload(function_app).app.get_functions()
    triggers = {str(b.type) for f in functions for b in f.get_bindings() if str(b.type).endswith("Trigger")}

    # The rules apply to every trigger the worker indexes, not only to what the devhost serves.
    assert {"httpTrigger", "timerTrigger", "queueTrigger"} <= triggers
    assert all(check_function(f) == [] for f in functions)


# -- type hints resolve at index time -----------------------------------------------------------------------------


def test_annotation_imported_only_under_type_checking_is_refused() -> None:
    def health(req: TypeCheckingOnlyRequest) -> func.HttpResponse:
        return func.HttpResponse("{}")

    (violation,) = _only(_health_app(health))

    assert violation.rule == "type-hints" and violation.function == "health"
    assert "TypeCheckingOnlyRequest" in violation.message


def test_return_annotation_imported_only_under_type_checking_is_refused() -> None:
    def health(req: func.HttpRequest) -> TypeCheckingOnlyRequest:
        raise NotImplementedError

    (violation,) = _only(_health_app(health))

    assert violation.rule == "type-hints"


# -- parameters equal binding names ---------------------------------------------------------------------------------


def test_parameter_without_a_binding_is_refused() -> None:
    def health(req: func.HttpRequest, tenant: str) -> func.HttpResponse:
        return func.HttpResponse(tenant)

    (violation,) = _only(_health_app(health))

    assert violation.rule == "parameters-match-bindings"
    assert "['tenant']" in violation.message and "declared in Python" in violation.message


def test_binding_without_a_parameter_is_refused() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
    def drain(message: func.QueueMessage) -> None:
        return None

    violations = _only(app)

    assert [v.rule for v in violations] == ["parameters-match-bindings", "parameters-match-bindings"]
    assert "['message']" in violations[0].message and "['msg']" in violations[1].message


def test_context_parameter_needs_no_binding_but_must_be_a_context() -> None:
    def good(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
        return func.HttpResponse(context.function_name)

    def bad(req: func.HttpRequest, context: dict) -> func.HttpResponse:
        return func.HttpResponse("")

    assert _only(_health_app(good)) == []
    (violation,) = _only(_health_app(bad))
    assert violation.rule == "context-annotation"


# -- annotations match binding types --------------------------------------------------------------------------------


def test_http_parameter_annotated_queue_message_is_refused() -> None:
    def health(req: func.QueueMessage) -> func.HttpResponse:
        return func.HttpResponse("{}")

    (violation,) = _only(_health_app(health))

    assert violation.rule == "annotation-matches-binding"
    assert '"httpTrigger"' in violation.message and '"QueueMessage"' in violation.message


def test_queue_parameter_annotated_http_request_is_refused_but_str_and_bytes_are_accepted() -> None:
    def build(annotation: object) -> func.FunctionApp:
        app = func.FunctionApp()

        def drain(msg):
            return None

        drain.__annotations__ = {"msg": annotation, "return": None}
        app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")(drain)
        return app

    (violation,) = _only(build(func.HttpRequest))
    assert violation.rule == "annotation-matches-binding" and '"queueTrigger"' in violation.message
    assert _only(build(func.QueueMessage)) == []
    assert _only(build(str)) == []
    assert _only(build(bytes)) == []


def test_optional_parameter_annotation_is_not_a_type() -> None:
    def health(req: func.HttpRequest | None) -> func.HttpResponse:
        return func.HttpResponse("{}")

    (violation,) = _only(_health_app(health))

    assert violation.rule == "annotation-is-type"


def test_output_binding_must_be_annotated_out() -> None:
    def build(annotation: object) -> func.FunctionApp:
        app = func.FunctionApp()

        def enqueue(req, msg):
            return func.HttpResponse("")

        enqueue.__annotations__ = {"req": func.HttpRequest, "msg": annotation, "return": func.HttpResponse}
        with_output = app.queue_output(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")(enqueue)
        app.route(route="enqueue", auth_level=func.AuthLevel.ANONYMOUS)(with_output)
        return app

    (plain,) = _only(build(str))
    assert plain.rule == "out-direction" and "not azure.functions.Out" in plain.message
    assert _only(build(func.Out[str])) == []
    (wrong,) = _only(build(func.Out[func.HttpResponse]))
    assert wrong.rule == "annotation-matches-binding" and '"queue"' in wrong.message


def test_input_binding_must_not_be_annotated_out() -> None:
    def health(req: func.Out[func.HttpRequest]) -> func.HttpResponse:
        return func.HttpResponse("{}")

    (violation,) = _only(_health_app(health))

    assert violation.rule == "out-direction" and 'direction "in"' in violation.message


def test_unannotated_parameters_are_accepted() -> None:
    def health(req):
        return func.HttpResponse("{}")

    assert _only(_health_app(health)) == []


# -- the return annotation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("annotation", [None, func.HttpResponse | None, func.Out[func.HttpResponse], int])
def test_http_return_annotation_must_be_a_response_type(annotation: object) -> None:
    def health(req):
        return func.HttpResponse("{}")

    health.__annotations__ = {"req": func.HttpRequest, "return": annotation}

    (violation,) = _only(_health_app(health))

    assert violation.rule == "return-annotation"


@pytest.mark.parametrize("annotation", [func.HttpResponse, str])
def test_http_return_annotation_accepts_response_and_str(annotation: type) -> None:
    def health(req):
        return func.HttpResponse("{}")

    health.__annotations__ = {"req": func.HttpRequest, "return": annotation}

    assert _only(_health_app(health)) == []


def test_non_http_function_returning_none_has_no_return_binding_to_match() -> None:
    app = func.FunctionApp()

    @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    def tick(timer: func.TimerRequest) -> None:
        return None

    assert _only(app) == []


# -- exactly one FunctionApp ----------------------------------------------------------------------------------------


def _module(**attributes: object) -> types.ModuleType:
    module = types.ModuleType("function_app_copy")
    module.__file__ = "/app/function_app.py"
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def test_second_function_app_in_the_module_is_refused() -> None:
    with pytest.raises(WorkerIndexingError) as caught:
        find_function_app(_module(app=func.FunctionApp(), admin_app=func.FunctionApp(), bp=func.Blueprint()))

    (violation,) = caught.value.violations
    assert violation.rule == "one-function-app"
    assert "more than one" in violation.message and "app, admin_app" in violation.message


def test_module_without_function_app_is_refused_and_a_blueprint_is_not_one() -> None:
    with pytest.raises(WorkerIndexingError, match="no top-level FunctionApp"):
        find_function_app(_module(bp=func.Blueprint()))


def test_one_function_app_with_blueprints_is_found() -> None:
    app = func.FunctionApp()

    assert find_function_app(_module(app=app, bp=func.Blueprint(), other=object())) is app


# -- the error ------------------------------------------------------------------------------------------------------


def test_error_lists_every_violation_of_every_function() -> None:
    app = func.FunctionApp()

    @app.route(route="a", auth_level=func.AuthLevel.ANONYMOUS)
    def first(req: func.QueueMessage) -> func.HttpResponse:
        return func.HttpResponse("")

    @app.route(route="b", auth_level=func.AuthLevel.ANONYMOUS)
    def second(req: func.HttpRequest, extra: int) -> func.HttpResponse:
        return func.HttpResponse("")

    with pytest.raises(WorkerIndexingError) as caught:
        check_functions(app.get_functions())

    text = str(caught.value)
    assert [(v.function, v.rule) for v in caught.value.violations] == [
        ("first", "annotation-matches-binding"),
        ("second", "parameters-match-bindings"),
    ]
    assert "would index no function" in text and "cannot load the first function" in text
    assert "cannot load the second function" in text
