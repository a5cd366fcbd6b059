from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_id", "features", "feature_map", "top_k", "allow_ad_ids", "deny_ad_ids", "with_contributions", "version", "apply_content_rules", "explore", "seed")
    class FeatureMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ALLOW_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    DENY_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLY_CONTENT_RULES_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    features: _containers.RepeatedScalarFieldContainer[float]
    feature_map: _containers.ScalarMap[str, float]
    top_k: int
    allow_ad_ids: _containers.RepeatedScalarFieldContainer[str]
    deny_ad_ids: _containers.RepeatedScalarFieldContainer[str]
    with_contributions: bool
    version: str
    apply_content_rules: bool
    explore: bool
    seed: int
    def __init__(self, user_id: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., feature_map: _Optional[_Mapping[str, float]] = ..., top_k: _Optional[int] = ..., allow_ad_ids: _Optional[_Iterable[str]] = ..., deny_ad_ids: _Optional[_Iterable[str]] = ..., with_contributions: _Optional[bool] = ..., version: _Optional[str] = ..., apply_content_rules: _Optional[bool] = ..., explore: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ScoredAd(_message.Message):
    __slots__ = ("ad_id", "ctr", "logit", "contributions", "ad_index")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    AD_INDEX_FIELD_NUMBER: _ClassVar[int]
    ad_id: str
    ctr: float
    logit: float
    contributions: _containers.RepeatedScalarFieldContainer[float]
    ad_index: int
    def __init__(self, ad_id: _Optional[str] = ..., ctr: _Optional[float] = ..., logit: _Optional[float] = ..., contributions: _Optional[_Iterable[float]] = ..., ad_index: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("version", "ads", "feature_names", "content_rules_applied", "explored", "seed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_RULES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    version: str
    ads: _containers.RepeatedCompositeFieldContainer[ScoredAd]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    content_rules_applied: bool
    explored: bool
    seed: int
    def __init__(self, version: _Optional[str] = ..., ads: _Optional[_Iterable[_Union[ScoredAd, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., content_rules_applied: _Optional[bool] = ..., explored: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class RankBatchRequest(_message.Message):
    __slots__ = ("features", "user_ids", "top_k", "allow_ad_ids", "deny_ad_ids", "version", "num_features", "skip_ad_ids", "apply_content_rules", "explore", "seed")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    ALLOW_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    DENY_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    SKIP_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    APPLY_CONTENT_RULES_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    features: bytes
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    allow_ad_ids: _containers.RepeatedScalarFieldContainer[str]
    deny_ad_ids: _containers.RepeatedScalarFieldContainer[str]
    version: str
    num_features: int
    skip_ad_ids: bool
    apply_content_rules: bool
    explore: bool
    seed: int
    def __init__(self, features: _Optional[bytes] = ..., user_ids: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., allow_ad_ids: _Optional[_Iterable[str]] = ..., deny_ad_ids: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., num_features: _Optional[int] = ..., skip_ad_ids: _Optional[bool] = ..., apply_content_rules: _Optional[bool] = ..., explore: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class RankBatchResponse(_message.Message):
    __slots__ = ("version", "num_users", "k", "ad_indices", "ctr", "logit", "ad_ids", "content_rules_applied", "explored", "seed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_USERS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    AD_INDICES_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_RULES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    version: str
    num_users: int
    k: int
    ad_indices: bytes
    ctr: bytes
    logit: bytes
    ad_ids: _containers.RepeatedScalarFieldContainer[str]
    content_rules_applied: bool
    explored: bool
    seed: int
    def __init__(self, version: _Optional[str] = ..., num_users: _Optional[int] = ..., k: _Optional[int] = ..., ad_indices: _Optional[bytes] = ..., ctr: _Optional[bytes] = ..., logit: _Optional[bytes] = ..., ad_ids: _Optional[_Iterable[str]] = ..., content_rules_applied: _Optional[bool] = ..., explored: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("user_id", "features", "feature_map", "ad_id", "version")
    class FeatureMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAP_FIELD_NUMBER: _ClassVar[int]
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    features: _containers.RepeatedScalarFieldContainer[float]
    feature_map: _containers.ScalarMap[str, float]
    ad_id: str
    version: str
    def __init__(self, user_id: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., feature_map: _Optional[_Mapping[str, float]] = ..., ad_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("name", "description", "value", "weight", "contribution", "rationale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    value: float
    weight: float
    contribution: float
    rationale: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., value: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ..., rationale: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("version", "ad_id", "logit", "ctr", "contributions", "rationale_json", "provenance_json", "content_rules", "excluded_by_rules")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    LOGIT_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_RULES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_BY_RULES_FIELD_NUMBER: _ClassVar[int]
    version: str
    ad_id: str
    logit: float
    ctr: float
    contributions: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    rationale_json: str
    provenance_json: str
    content_rules: _containers.RepeatedCompositeFieldContainer[ContentRule]
    excluded_by_rules: bool
    def __init__(self, version: _Optional[str] = ..., ad_id: _Optional[str] = ..., logit: _Optional[float] = ..., ctr: _Optional[float] = ..., contributions: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., rationale_json: _Optional[str] = ..., provenance_json: _Optional[str] = ..., content_rules: _Optional[_Iterable[_Union[ContentRule, _Mapping]]] = ..., excluded_by_rules: _Optional[bool] = ...) -> None: ...

class ContentRule(_message.Message):
    __slots__ = ("feature", "threshold", "value", "fires", "rule_index")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FIRES_FIELD_NUMBER: _ClassVar[int]
    RULE_INDEX_FIELD_NUMBER: _ClassVar[int]
    feature: str
    threshold: float
    value: float
    fires: bool
    rule_index: int
    def __init__(self, feature: _Optional[str] = ..., threshold: _Optional[float] = ..., value: _Optional[float] = ..., fires: _Optional[bool] = ..., rule_index: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class VersionSummary(_message.Message):
    __slots__ = ("version", "created_at", "n_ads", "n_features", "generator", "current")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    N_ADS_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    version: str
    created_at: float
    n_ads: int
    n_features: int
    generator: str
    current: bool
    def __init__(self, version: _Optional[str] = ..., created_at: _Optional[float] = ..., n_ads: _Optional[int] = ..., n_features: _Optional[int] = ..., generator: _Optional[str] = ..., current: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "n_ads", "ad_ids", "features", "manifest_json", "versions", "created_at", "n_users")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    N_ADS_FIELD_NUMBER: _ClassVar[int]
    AD_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    N_USERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    n_ads: int
    ad_ids: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    manifest_json: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionSummary]
    created_at: float
    n_users: int
    def __init__(self, version: _Optional[str] = ..., n_ads: _Optional[int] = ..., ad_ids: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., manifest_json: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionSummary, _Mapping]]] = ..., created_at: _Optional[float] = ..., n_users: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
