"""CTR task: MovieLens-100k and synthetic Zipf data, DeepFM and DCN-v2 reference models."""

from .data import CTRData, load_movielens
from .models import DCNv2, DeepFM
from .synthetic import make_synthetic
from .task import CTRTask, TeacherRecipe, train_teacher

__all__ = ["CTRData", "CTRTask", "DCNv2", "DeepFM", "TeacherRecipe", "load_movielens",
           "make_synthetic", "train_teacher"]
