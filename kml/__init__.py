"""kml: multimodal few-shot meta-learning (MAML, ProtoNet, FiLM, Kernel ModuLation)."""
from kml.run_names import register_resolvers

register_resolvers()
