"""``POST /classify``: MNIST digits through the static-hypernetwork ConvNet bundle."""

from serve.bundle_api import BatchPredictAPI
from serve.schemas import PIXEL_MAX, ClassifyRequest, ClassifyResponse


class ClassifyAPI(BatchPredictAPI):
    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/classify", **options)

    def decode_request(self, request: ClassifyRequest) -> ClassifyRequest:
        return request

    def predict_batch(self, requests: list[ClassifyRequest]) -> list[ClassifyResponse]:
        import torch

        # the model takes intensities in [0, 1]; requests carry grey values 0-255
        images = (
            torch.tensor([request.grey_values() for request in requests]).unsqueeze(1) / PIXEL_MAX
        )
        probabilities = torch.softmax(self.bundle.model(images).float(), dim=-1)
        return [
            ClassifyResponse(digit=int(row.argmax()), probabilities=row.tolist())
            for row in probabilities
        ]

    def encode_response(self, output: ClassifyResponse) -> ClassifyResponse:
        return output
