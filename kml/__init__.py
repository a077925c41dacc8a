"""kml: multimodal few-shot meta-learning (MAML, ProtoNet, FiLM, Kernel ModuLation)."""
import warnings

try:
    from kml.config import register_resolvers
except ModuleNotFoundError as missing:
    # Only `python -m kml.bench gpu` runs without them, on a bare GPU machine where it installs them first.
    if missing.name not in ("omegaconf", "hydra"):
        raise
else:
    register_resolvers()

# conf/hydra/launcher/submitit_slurm.yaml deliberately overrides the plugin's node of the same name (to turn
# requeue-on-timeout on), which Hydra 1.3 still supports but announces as deprecated on every run. Filtered
# here rather than in launch.py because SLURM jobs import kml but never run launch.py's top level.
warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")
