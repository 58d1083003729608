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

class FieldFilter(_message.Message):
    __slots__ = ("field", "any_of", "none_of", "min", "max", "exists")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    field: str
    any_of: _containers.RepeatedScalarFieldContainer[str]
    none_of: _containers.RepeatedScalarFieldContainer[str]
    min: float
    max: float
    exists: bool
    def __init__(self, field: _Optional[str] = ..., any_of: _Optional[_Iterable[str]] = ..., none_of: _Optional[_Iterable[str]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., exists: _Optional[bool] = ...) -> None: ...

class FacetRequest(_message.Message):
    __slots__ = ("field", "size", "ranges")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    field: str
    size: int
    ranges: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, field: _Optional[str] = ..., size: _Optional[int] = ..., ranges: _Optional[_Iterable[float]] = ...) -> None: ...

class Sort(_message.Message):
    __slots__ = ("field", "descending")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    field: str
    descending: bool
    def __init__(self, field: _Optional[str] = ..., descending: _Optional[bool] = ...) -> None: ...

class Boost(_message.Message):
    __slots__ = ("field", "value", "factor", "add")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    factor: float
    add: float
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ..., factor: _Optional[float] = ..., add: _Optional[float] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("id", "position")
    ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    id: str
    position: int
    def __init__(self, id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "image", "filters", "price", "k", "offset", "exclude_ids", "fusion", "weights", "sources", "fields", "explain", "constraint", "composed_text_weight", "stages", "rerank_depth", "log_features", "session", "where", "facets", "sort", "highlight", "boosts", "pins", "hide_ids", "min_score", "no_rules", "like_id")
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
    WHERE_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHT_FIELD_NUMBER: _ClassVar[int]
    BOOSTS_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    HIDE_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    NO_RULES_FIELD_NUMBER: _ClassVar[int]
    LIKE_ID_FIELD_NUMBER: _ClassVar[int]
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
    where: _containers.RepeatedCompositeFieldContainer[FieldFilter]
    facets: _containers.RepeatedCompositeFieldContainer[FacetRequest]
    sort: Sort
    highlight: bool
    boosts: _containers.RepeatedCompositeFieldContainer[Boost]
    pins: _containers.RepeatedCompositeFieldContainer[Pin]
    hide_ids: _containers.RepeatedScalarFieldContainer[str]
    min_score: float
    no_rules: bool
    like_id: str
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., filters: _Optional[_Mapping[str, str]] = ..., price: _Optional[_Union[PriceRange, _Mapping]] = ..., k: _Optional[int] = ..., offset: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., weights: _Optional[_Mapping[str, float]] = ..., sources: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[str]] = ..., explain: _Optional[bool] = ..., constraint: _Optional[str] = ..., composed_text_weight: _Optional[float] = ..., stages: _Optional[str] = ..., rerank_depth: _Optional[int] = ..., log_features: _Optional[bool] = ..., session: _Optional[str] = ..., where: _Optional[_Iterable[_Union[FieldFilter, _Mapping]]] = ..., facets: _Optional[_Iterable[_Union[FacetRequest, _Mapping]]] = ..., sort: _Optional[_Union[Sort, _Mapping]] = ..., highlight: _Optional[bool] = ..., boosts: _Optional[_Iterable[_Union[Boost, _Mapping]]] = ..., pins: _Optional[_Iterable[_Union[Pin, _Mapping]]] = ..., hide_ids: _Optional[_Iterable[str]] = ..., min_score: _Optional[float] = ..., no_rules: _Optional[bool] = ..., like_id: _Optional[str] = ...) -> None: ...

class Highlight(_message.Message):
    __slots__ = ("field", "fragment", "html", "starts", "ends")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    field: str
    fragment: str
    html: str
    starts: _containers.RepeatedScalarFieldContainer[int]
    ends: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, field: _Optional[str] = ..., fragment: _Optional[str] = ..., html: _Optional[str] = ..., starts: _Optional[_Iterable[int]] = ..., ends: _Optional[_Iterable[int]] = ...) -> None: ...

class FacetValue(_message.Message):
    __slots__ = ("value", "count", "selected")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    selected: bool
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ..., selected: _Optional[bool] = ...) -> None: ...

class FacetBucket(_message.Message):
    __slots__ = ("min", "max", "count")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    count: int
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class Facet(_message.Message):
    __slots__ = ("field", "values", "buckets", "missing", "other", "disjunctive", "counted")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    DISJUNCTIVE_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    field: str
    values: _containers.RepeatedCompositeFieldContainer[FacetValue]
    buckets: _containers.RepeatedCompositeFieldContainer[FacetBucket]
    missing: int
    other: int
    disjunctive: bool
    counted: int
    def __init__(self, field: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FacetValue, _Mapping]]] = ..., buckets: _Optional[_Iterable[_Union[FacetBucket, _Mapping]]] = ..., missing: _Optional[int] = ..., other: _Optional[int] = ..., disjunctive: _Optional[bool] = ..., counted: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("id", "score", "sources", "fields_json", "explanation", "contributions", "features", "highlights", "lexical_match", "rules", "sort_value")
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
    HIGHLIGHTS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_MATCH_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SORT_VALUE_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    sources: _containers.RepeatedCompositeFieldContainer[SourceScore]
    fields_json: str
    explanation: str
    contributions: _containers.ScalarMap[str, float]
    features: _containers.ScalarMap[str, float]
    highlights: _containers.RepeatedCompositeFieldContainer[Highlight]
    lexical_match: bool
    rules: _containers.RepeatedScalarFieldContainer[str]
    sort_value: float
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[SourceScore, _Mapping]]] = ..., fields_json: _Optional[str] = ..., explanation: _Optional[str] = ..., contributions: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Mapping[str, float]] = ..., highlights: _Optional[_Iterable[_Union[Highlight, _Mapping]]] = ..., lexical_match: _Optional[bool] = ..., rules: _Optional[_Iterable[str]] = ..., sort_value: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "total_candidates", "bundle_version", "model_versions", "took_ms", "stages", "request_id", "stage_ms", "facets", "facet_scope")
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
    FACETS_FIELD_NUMBER: _ClassVar[int]
    FACET_SCOPE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    total_candidates: int
    bundle_version: str
    model_versions: _containers.ScalarMap[str, str]
    took_ms: float
    stages: str
    request_id: str
    stage_ms: _containers.ScalarMap[str, float]
    facets: _containers.RepeatedCompositeFieldContainer[Facet]
    facet_scope: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., total_candidates: _Optional[int] = ..., bundle_version: _Optional[str] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., took_ms: _Optional[float] = ..., stages: _Optional[str] = ..., request_id: _Optional[str] = ..., stage_ms: _Optional[_Mapping[str, float]] = ..., facets: _Optional[_Iterable[_Union[Facet, _Mapping]]] = ..., facet_scope: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id", "title", "description", "category", "attributes", "price", "image_uri", "image", "image_uris", "images")
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
    IMAGE_URIS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    description: str
    category: str
    attributes: _containers.ScalarMap[str, str]
    price: float
    image_uri: str
    image: bytes
    image_uris: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., category: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., price: _Optional[float] = ..., image_uri: _Optional[str] = ..., image: _Optional[bytes] = ..., image_uris: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

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
