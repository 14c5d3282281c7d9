"""The seed README's examples (torch/ao/pruning/_experimental/data_sparsifier/README.md), as
written there with only the import changed."""

import torch
from torch import nn

from data_sparsifier import BaseDataSparsifier  # was: torch.ao.pruning._experimental.data_sparsifier


# "Write your own data sparsifier", verbatim.
class ImplementedDataSparsifier(BaseDataSparsifier):
    def __init__(self, threshold):
        super().__init__(threshold=threshold)

    def update_mask(self, name, data, threshold):
        mask = self.get_mask(name)
        mask[torch.abs(data) < threshold] = 0.0


def test_simple_example():
    tensor1 = torch.randn(100, 100)
    param1 = nn.Parameter(torch.randn(200, 32))

    my_sparsifier = ImplementedDataSparsifier(threshold=0.2)
    my_sparsifier.add_data(name='tensor1', data=tensor1, threshold=0.5)
    my_sparsifier.add_data(name='param1', data=param1)
    before1, before2 = tensor1.clone(), param1.detach().clone()

    my_sparsifier.step()  # computes mask

    my_sparsifier.squash_mask()  # applies and removes mask

    # What the example promises: every |x| below the threshold is zeroed in place, the rest kept.
    assert torch.equal(tensor1, torch.where(before1.abs() < 0.5, torch.zeros_like(before1), before1))
    assert torch.equal(param1.detach(), torch.where(before2.abs() < 0.2, torch.zeros_like(before2), before2))
    assert isinstance(param1, nn.Parameter) and param1.requires_grad


def test_sparsifying_model_embeddings():
    class Model(nn.Module):
        def __init__(self, feature_dim, emb_dim, num_classes):
            super().__init__()  # missing in the README, which fails as written in PyTorch too
            self.emb = nn.EmbeddingBag(feature_dim, emb_dim)
            self.linear1 = nn.Linear(emb_dim, 32)
            self.linear2 = nn.Linear(32, num_classes)
            self.relu = nn.ReLU()

        def forward(self, x):
            out = self.emb(x)
            out = self.relu(self.linear1(out))
            out = self.linear2(out)
            return out

    model = Model(100, 32, 10)
    my_sparsifier = ImplementedDataSparsifier(threshold=0.5)
    my_sparsifier.add_data(name='emb', data=model.emb)

    weight = model.emb.weight
    original = weight.detach().clone()
    ptr = weight.data_ptr()

    my_sparsifier.step()  # creates mask for embeddings

    my_sparsifier.squash_mask()  # applies and removes mask

    assert model.emb.weight is weight and weight.data_ptr() == ptr  # same object, same storage
    expected = torch.where(original.abs() < 0.5, torch.zeros_like(original), original)
    assert torch.equal(model.emb.weight.detach(), expected)
    out = model(torch.tensor([[1, 2, 3]]))  # the next forward uses the sparse weights
    assert out.shape == (1, 10)


def test_training_data_loop():
    torch.manual_seed(0)
    train_data_loader = [(torch.randn(8, 16), torch.randn(8, 4)) for _ in range(5)]
    model = nn.Linear(16, 4)

    data_sparsifier = ImplementedDataSparsifier(threshold=0.2)

    data_name = 'train_data'

    seen = []
    for x, y in train_data_loader:
        x = data_sparsifier.add_data(name=data_name, data=x)
        y_out = model(x)
        data_sparsifier.step()
        seen.append(x)
        assert y_out.shape == (8, 4)

    # add_data returns mask * data: the first batch with a keep-all mask, later ones through the
    # mask computed at the previous step (the mask is reused by a same-name replace).
    first, second = train_data_loader[0][0], train_data_loader[1][0]
    assert torch.equal(seen[0], first)
    assert torch.equal(seen[1], torch.where(first.abs() < 0.2, torch.zeros_like(second), second))
