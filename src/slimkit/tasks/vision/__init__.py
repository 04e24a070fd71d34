"""Vision task: Fashion-MNIST image classification and a small reference CNN."""

from .data import ImageData, load_fashion_mnist
from .models import SmallCNN
from .task import TeacherRecipe, VisionTask, train_teacher

__all__ = ["ImageData", "SmallCNN", "TeacherRecipe", "VisionTask", "load_fashion_mnist",
           "train_teacher"]
