"""Three small models, each a factory that b3 calls with the keyword arguments it declares
(num_classes, image_size, input_shape, vocab_size) and that returns an nn.Module."""

from torch import nn

from b3core import model_inputs


def tiny_cnn(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """An image model: its defaults (3x32x32 input, 10 classes) come from its own signature."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


@model_inputs(input_shape=(128,), num_classes=4)
def tiny_mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A model of 128 features, declared with b3's decorator."""
    return nn.Sequential(nn.Linear(input_shape[0], 256), nn.ReLU(), nn.Linear(256, num_classes))


class BagOfTokens(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, width: int = 64):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens):
        return self.head(self.embedding(tokens))


def tiny_text(num_classes: int, vocab_size: int) -> nn.Module:
    """A text classifier over token ids, declared with attributes instead of the decorator."""
    return BagOfTokens(vocab_size, num_classes)


tiny_text.b3_input_shape = (32,)
tiny_text.b3_input_dtype = "int64"
tiny_text.b3_vocab_size = 1000
tiny_text.b3_num_classes = 2
