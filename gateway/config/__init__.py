"""The config: one strict YAML file and the environment, read into frozen dataclasses.

    model.py    every key: one dataclass field with its parser and its default
    section.py  option() / required() / section(): how a field declares a key, a section is read
    parsers.py  the small typed parsers (integers, choices, addresses, URLs ...)
    plans.py    the plans mapping and the rule that default_plan names one of them
    routes.py   a route's parsers and the rules that span its keys
    scanning.py where the public keys of secret-scanning reports come from (a file or a URL)
    load.py     load_config / parse_config: YAML, ${VAR} interpolation, GATEWAY_* overrides
"""

from gateway.config.load import load_config as load_config
from gateway.config.load import parse_config as parse_config
from gateway.config.model import Config as Config
from gateway.config.model import ConsoleConfig as ConsoleConfig
from gateway.config.model import CorsConfig as CorsConfig
from gateway.config.model import Defaults as Defaults
from gateway.config.model import GithubScanningConfig as GithubScanningConfig
from gateway.config.model import HealthConfig as HealthConfig
from gateway.config.model import KeyCacheConfig as KeyCacheConfig
from gateway.config.model import KeysConfig as KeysConfig
from gateway.config.model import KeyStoreConfig as KeyStoreConfig
from gateway.config.model import LimiterConfig as LimiterConfig
from gateway.config.model import LimitsConfig as LimitsConfig
from gateway.config.model import LoggingConfig as LoggingConfig
from gateway.config.model import PlanConfig as PlanConfig
from gateway.config.model import QuotaConfig as QuotaConfig
from gateway.config.model import RateLimit as RateLimit
from gateway.config.model import RouteConfig as RouteConfig
from gateway.config.model import RouteRateLimit as RouteRateLimit
from gateway.config.model import SecretScanningConfig as SecretScanningConfig
from gateway.config.model import UsageConfig as UsageConfig
from gateway.config.parsers import Listen as Listen
from gateway.config.routes import DEFAULT_OPERATIONS as DEFAULT_OPERATIONS
