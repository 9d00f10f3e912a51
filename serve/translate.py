"""``POST /translate``: concurrent requests decoded together in one batched beam search.

Requests that LitServe collected into one batch and ask for the same beam settings have all
their texts decoded by one ``translate_texts`` call; requests with other settings form their
own groups. A sentence's translation does not depend on the batch it was decoded in.
"""

from dataclasses import replace
from typing import TYPE_CHECKING

from serve.bundle_api import BundleAPI
from serve.schemas import Candidate, TranslateRequest, TranslateResponse, Translation

if TYPE_CHECKING:
    from nmt.decoding import DecodingOptions, Hypothesis

SENTENCES_PER_SEARCH = 64  # one beam search decodes at most this many sentences at once

OptionsKey = tuple[int | None, float | None, float | None, int | None]


class TranslateAPI(BundleAPI):
    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/translate", **options)

    def decode_request(self, request: TranslateRequest) -> TranslateRequest:
        return request

    def predict_batch(self, requests: list[TranslateRequest]) -> list[TranslateResponse]:
        from nmt.decoding.translate import translate_texts

        groups: dict[OptionsKey, list[int]] = {}
        for index, request in enumerate(requests):
            key = (request.beam_size, request.alpha, request.beta, request.nbest)
            groups.setdefault(key, []).append(index)
        responses: list[TranslateResponse | None] = [None] * len(requests)
        for key, members in groups.items():
            texts = [text for index in members for text in requests[index].texts]
            hypotheses = translate_texts(
                self.bundle.model,
                self.bundle.wordpieces,
                texts,
                self._options(*key),
                batch_size=SENTENCES_PER_SEARCH,
            )
            start = 0
            for index in members:
                count = len(requests[index].texts)
                responses[index] = self._response(
                    hypotheses[start : start + count], nbest=requests[index].nbest is not None
                )
                start += count
        return responses

    def encode_response(self, output: TranslateResponse) -> TranslateResponse:
        return output

    def _options(
        self, beam_size: int | None, alpha: float | None, beta: float | None, nbest: int | None
    ) -> "DecodingOptions":
        """The bundle's decoding options with the request's overrides; the beam holds nbest."""
        defaults = self.bundle.decoding
        nbest = nbest or 1
        beam_size = beam_size or max(defaults.beam_size, nbest)
        return replace(
            defaults,
            beam_size=beam_size,
            alpha=defaults.alpha if alpha is None else alpha,
            beta=defaults.beta if beta is None else beta,
            nbest=nbest,
            return_attention=False,
        )

    def _response(self, per_text: list[list["Hypothesis"]], nbest: bool) -> TranslateResponse:
        decode = self.bundle.wordpieces.decode
        translations = []
        for hypotheses in per_text:
            candidates = [
                Candidate(text=decode(h.tokens), score=h.score, log_prob=h.log_prob)
                for h in hypotheses
            ]
            best = candidates[0]
            translations.append(
                Translation(
                    text=best.text,
                    score=best.score,
                    log_prob=best.log_prob,
                    nbest=candidates if nbest else None,
                )
            )
        return TranslateResponse(translations=translations)
