from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
    FUSION_WEIGHTED_MAX: _ClassVar[Fusion]
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_WEIGHTED: Fusion
FUSION_WEIGHTED_MAX: Fusion

class PriceRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "image", "filters", "price", "k", "offset", "exclude_ids", "fusion", "weights", "sources", "fields", "explain", "constraint", "composed_text_weight", "stages", "rerank_depth", "log_features", "session")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    COMPOSED_TEXT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LOG_FEATURES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    filters: _containers.ScalarMap[str, str]
    price: PriceRange
    k: int
    offset: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    fusion: Fusion
    weights: _containers.ScalarMap[str, float]
    sources: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedScalarFieldContainer[str]
    explain: bool
    constraint: str
    composed_text_weight: float
    stages: str
    rerank_depth: int
    log_features: bool
    session: str
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., filters: _Optional[_Mapping[str, str]] = ..., price: _Optional[_Union[PriceRange, _Mapping]] = ..., k: _Optional[int] = ..., offset: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., weights: _Optional[_Mapping[str, float]] = ..., sources: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., explain: _Optional[bool] = ..., constraint: _Optional[str] = ..., composed_text_weight: _Optional[float] = ..., stages: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., log_features: _Optional[bool] = ..., session: _Optional[str] = ...) -> None: ...

class SourceScore(_message.Message):
    __slots__ = ("source", "score", "rank")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    source: str
    score: float
    rank: int
    def __init__(self, source: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "sources", "fields_json", "explanation", "contributions", "features")
    class ContributionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    sources: _containers.RepeatedCompositeFieldContainer[SourceScore]
    fields_json: str
    explanation: str
    contributions: _containers.ScalarMap[str, float]
    features: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[SourceScore, _Mapping]]] = ..., fields_json: _Optional[str] = ..., explanation: _Optional[str] = ..., contributions: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "total_candidates", "bundle_version", "model_versions", "took_ms", "stages", "request_id", "stage_ms")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    total_candidates: int
    bundle_version: str
    model_versions: _containers.ScalarMap[str, str]
    took_ms: float
    stages: str
    request_id: str
    stage_ms: _containers.ScalarMap[str, float]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., total_candidates: _Optional[int] = ..., bundle_version: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., took_ms: _Optional[float] = ..., stages: _Optional[str] = ..., request_id: _Optional[str] = ..., stage_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "clicked", "dwell_ms")
    class DwellMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    clicked: _containers.RepeatedScalarFieldContainer[str]
    dwell_ms: _containers.ScalarMap[str, int]
    def __init__(self, request_id: _Optional[str] = ..., clicked: _Optional[_Iterable[str]] = ..., dwell_ms: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("logged",)
    LOGGED_FIELD_NUMBER: _ClassVar[int]
    logged: bool
    def __init__(self, logged: _Optional[bool] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("bundle", "reranker", "ranker")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    RANKER_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    reranker: str
    ranker: str
    def __init__(self, bundle: _Optional[str] = ..., reranker: _Optional[str] = ..., ranker: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("bundle_version", "previous_bundle_version", "model_versions", "load_ms")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    previous_bundle_version: str
    model_versions: _containers.ScalarMap[str, str]
    load_ms: float
    def __init__(self, bundle_version: _Optional[str] = ..., previous_bundle_version: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., load_ms: _Optional[float] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("bundle_version", "manifest_json")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    manifest_json: str
    def __init__(self, bundle_version: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "title", "description", "category", "attributes", "price", "image_uri", "image")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    description: str
    category: str
    attributes: _containers.ScalarMap[str, str]
    price: float
    image_uri: str
    image: bytes
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., category: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., price: _Optional[float] = ..., image_uri: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class ItemPatch(_message.Message):
    __slots__ = ("id", "price", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    price: float
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., price: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("item", "patch")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    item: Item
    patch: ItemPatch
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., patch: _Optional[_Union[ItemPatch, _Mapping]] = ...) -> None: ...

class UpsertAck(_message.Message):
    __slots__ = ("id", "changed")
    ID_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    changed: bool
    def __init__(self, id: _Optional[str] = ..., changed: _Optional[bool] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("items_json",)
    ITEMS_JSON_FIELD_NUMBER: _ClassVar[int]
    items_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items_json: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("out_dir",)
    OUT_DIR_FIELD_NUMBER: _ClassVar[int]
    out_dir: str
    def __init__(self, out_dir: _Optional[str] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("path", "bundle_version", "items")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    path: str
    bundle_version: str
    items: int
    def __init__(self, path: _Optional[str] = ..., bundle_version: _Optional[str] = ..., items: _Optional[int] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "bundle", "reranker", "ranker", "read_only", "config_toml")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    RANKER_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    name: str
    bundle: str
    reranker: str
    ranker: str
    read_only: bool
    config_toml: str
    def __init__(self, name: _Optional[str] = ..., bundle: _Optional[str] = ..., reranker: _Optional[str] = ..., ranker: _Optional[str] = ..., read_only: _Optional[bool] = ..., config_toml: _Optional[str] = ...) -> None: ...

class TenantInfo(_message.Message):
    __slots__ = ("name", "bundle_version", "items", "model_versions", "backends", "read_only", "quota_json", "experiment")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class BackendsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    bundle_version: str
    items: int
    model_versions: _containers.ScalarMap[str, str]
    backends: _containers.ScalarMap[str, str]
    read_only: bool
    quota_json: str
    experiment: str
    def __init__(self, name: _Optional[str] = ..., bundle_version: _Optional[str] = ..., items: _Optional[int] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., backends: _Optional[_Mapping[str, str]] = ..., read_only: _Optional[bool] = ..., quota_json: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "shared_models_json")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MODELS_JSON_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantInfo]
    shared_models_json: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[TenantInfo, _Mapping]]] = ..., shared_models_json: _Optional[str] = ...) -> None: ...

class DropTenantRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropTenantResponse(_message.Message):
    __slots__ = ("archived_to",)
    ARCHIVED_TO_FIELD_NUMBER: _ClassVar[int]
    archived_to: str
    def __init__(self, archived_to: _Optional[str] = ...) -> None: ...
