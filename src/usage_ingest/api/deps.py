"""What a route declares besides its own query and body: the app's objects (the
store, the settings, the publisher, the metrics), which `create_app` keeps in the
app's state, as `Annotated[..., Depends(...)]` parameters; and the id in a record's
path."""

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from usage_ingest.api.metrics import ApiMetrics
from usage_ingest.api.publisher import Publisher
from usage_ingest.domain.messages import ID_MAX, ID_MIN
from usage_ingest.settings import Settings
from usage_ingest.store.store import Store


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def id_path() -> Any:
    return Path(alias="id", ge=ID_MIN, le=ID_MAX, description="The record's id.")
