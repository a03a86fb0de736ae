"""The GLSCL model family, registered with LAVIS: ``glscl_pretrain`` (:mod:`.pretrain`), ``glscl_retrieval``
(:mod:`.retrieval`), ``glscl_vqa`` (:mod:`.vqa`) and ``glscl_nlvr`` (:mod:`.nlvr`) on the shared
:class:`~.base.GlsclBase`, configured by :class:`~.config.GlsclConfig` and returning :mod:`.outputs`."""
from lavis_glscl.models.glscl.base import GlsclBase
from lavis_glscl.models.glscl.config import FusionConfig, GlsclConfig, TextConfig, VisionConfig, VisionInit
from lavis_glscl.models.glscl.nlvr import GlsclNlvr
from lavis_glscl.models.glscl.outputs import FusionOutput, GlsclIntermediateOutput, GlsclOutput
from lavis_glscl.models.glscl.pretrain import GlsclPretrain, PretrainingStep
from lavis_glscl.models.glscl.retrieval import GlsclRetrieval, RetrievalStep
from lavis_glscl.models.glscl.vqa import GlsclVqa

__all__ = ["GlsclBase", "GlsclConfig", "VisionConfig", "VisionInit", "TextConfig", "FusionConfig", "FusionOutput",
           "GlsclIntermediateOutput", "GlsclOutput", "GlsclPretrain", "PretrainingStep", "GlsclRetrieval",
           "RetrievalStep", "GlsclVqa", "GlsclNlvr"]
