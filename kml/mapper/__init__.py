"""The meta-mapper of "Meta Learning to Bridge Vision and Language Models for Multimodal Few-Shot Learning"
(Najdenkoska, Zhen, Worring, ICLR 2023): a frozen vision encoder and a frozen language model bridged by a
small mapper, the only learned part, meta-trained with MAML on captioning tasks (`pipeline=mapper`).

Modules, one job each:
    encoders      frozen CLIP vision / causal LM from a folder, a package or the hub; one-line errors
    tiny          tiny stand-ins of both built from transformers configs, for CPU runs and tests
    mapper        MetaMapper (prefix tokens + set attention over visual tokens), its switches, parameter count
    frozen_lm     prefix-conditioned caption loss and greedy generation that stops at EOS
    maml          MAML on the mapper only (first / second order), 0-step and adapted evaluation
    metrics       name match and exact match of generated answers (bare-name or caption answers)
    coco, frozen_bench, novel_names   the data: COCO captions, Frozen benchmarks, a synthetic family
    features      visual features computed once and cached
    episodes, sources                 tasks from cached features, chosen by the config
    run           the runner behind launch.py
"""
