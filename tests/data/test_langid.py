"""Offline language ID (character 1–3-gram naive Bayes): accurate on sentences it never saw,
the shipped model is exactly what the training script makes, and the keep-languages stage
removes the other-language documents."""
import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lineage_jax.data.pipeline import langid

ROOT = Path(__file__).resolve().parents[2]

# Written for this test on topics absent from scripts/langid_text (never trained on).
FRESH = {
    "en": ["The volcano has been quiet for centuries, yet the scientists still measure it every week.",
           "Could you send me the spreadsheet with last quarter's numbers before lunch?",
           "Penguins cannot fly, but they are remarkably fast swimmers."],
    "de": ["Der Vulkan ist seit Jahrhunderten ruhig, trotzdem messen ihn die Forscher jede Woche.",
           "Kannst du mir die Tabelle mit den Zahlen des letzten Quartals vor dem Mittagessen schicken?",
           "Pinguine können nicht fliegen, aber sie schwimmen erstaunlich schnell."],
    "fr": ["Le volcan est calme depuis des siècles, mais les chercheurs le surveillent chaque semaine.",
           "Peux-tu m'envoyer le tableau avec les chiffres du dernier trimestre avant le déjeuner ?",
           "Les manchots ne savent pas voler, mais ce sont des nageurs étonnamment rapides."],
    "es": ["El volcán lleva siglos tranquilo, pero los científicos lo vigilan todas las semanas.",
           "¿Me puedes mandar la hoja de cálculo con las cifras del último trimestre antes de comer?",
           "Los pingüinos no pueden volar, pero nadan a una velocidad sorprendente."],
    "it": ["Il vulcano è tranquillo da secoli, eppure gli scienziati lo misurano ogni settimana.",
           "Mi puoi mandare il foglio di calcolo con i numeri dell'ultimo trimestre prima di pranzo?",
           "I pinguini non sanno volare, ma sono nuotatori sorprendentemente veloci."],
    "nl": ["De vulkaan is al eeuwen rustig, maar de onderzoekers meten hem nog steeds elke week.",
           "Kun je me de spreadsheet met de cijfers van het vorige kwartaal voor de lunch sturen?",
           "Pinguïns kunnen niet vliegen, maar het zijn verrassend snelle zwemmers."],
    "pt": ["O vulcão está calmo há séculos, mas os cientistas continuam a medi-lo todas as semanas.",
           "Podes enviar-me a folha de cálculo com os números do último trimestre antes do almoço?",
           "Os pinguins não voam, mas são nadadores surpreendentemente rápidos."],
    "other": ["Vulkanen har varit lugn i århundraden, men forskarna mäter den ändå varje vecka.",
              "Wulkan jest spokojny od stuleci, a mimo to naukowcy badają go co tydzień.",
              "Tulivuori on ollut rauhallinen vuosisatoja, mutta tutkijat mittaavat sitä joka viikko.",
              "Вулкан молчит уже много веков, но учёные всё равно измеряют его каждую неделю.",
              "3.14159 2.71828 1.41421 !!! ### 42"],
}


def _script():
    spec = importlib.util.spec_from_file_location("train_langid", ROOT / "scripts" / "train_langid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ngrams_are_word_padded_1_to_3_grams():
    assert langid.ngram_counts("Ab, ab!") == Counter({"a": 2, "b": 2, " a": 2, "ab": 2, "b ": 2,
                                                      " ab": 2, "ab ": 2})
    assert langid.words("l'été 2024, déjà-vu") == ["l", "été", "déjà", "vu"]


def test_naive_bayes_scores_by_hand():
    model = langid.train({"x": ["aa"], "y": ["b"]}, alpha=1.0, max_n=1)
    ident = langid.LanguageIdentifier(model)
    # x saw {a: 2}, y saw {b: 1}; V = 2 grams; log P(g|l) = log((c + 1) / (N_l + 2))
    want_x = 3 * math.log(3 / 4) + 1 * math.log(1 / 4)            # text "aaa b": a×3, b×1
    want_y = 3 * math.log(1 / 3) + 1 * math.log(2 / 3)
    np.testing.assert_allclose(ident.scores("aaa b"), [want_x, want_y])
    # an unseen gram costs log(alpha / (N_l + alpha·V)) in each label
    np.testing.assert_allclose(ident.scores("c"), [math.log(1 / 4), math.log(1 / 3)])


def test_shipped_model_is_what_the_script_trains_and_is_small():
    script = _script()
    shipped = langid.MODEL_PATH.read_text(encoding="utf-8")
    assert len(shipped.encode()) < 1 << 20
    assert script.dumps(script.build_model()) == shipped
    assert json.loads(shipped)["labels"] == sorted([*langid.LANGUAGES, langid.OTHER])


def test_heldout_sentences_are_never_trained_on_and_mostly_right():
    script = _script()
    corpus = script.read_corpus()
    for lab, (train, held) in corpus.items():
        assert held and not set(held) & set(train), lab
        assert len(train) >= 40, lab
    acc = script.heldout_accuracy(langid.default_identifier(), corpus)
    assert acc["all"] >= 0.93, acc
    assert min(acc[lang] for lang in langid.LANGUAGES) >= 0.85, acc


def test_fresh_sentences_and_documents():
    ident = langid.default_identifier()
    pairs = [(lab, s) for lab, ss in FRESH.items() for s in ss]
    right = sum(ident.predict(s) == lab for lab, s in pairs)
    assert right / len(pairs) >= 0.9, [(lab, ident.predict(s), s) for lab, s in pairs if ident.predict(s) != lab]
    for lab in langid.LANGUAGES:                # a document (several sentences) is easier than one
        assert ident.predict(" ".join(FRESH[lab])) == lab
    assert ident.predict("") == langid.OTHER and ident.predict("12345 ... ###") == langid.OTHER
    assert ident.predict(FRESH["other"][3]) == langid.OTHER        # Cyrillic: by script alone


def test_keep_languages_removes_the_planted_other_language_docs():
    docs = [" ".join(FRESH["en"]), " ".join(FRESH["de"]), " ".join(FRESH["fr"]), " ".join(FRESH["other"][:3]),
            FRESH["other"][3], " ".join(FRESH["en"][::-1])]
    kept, removed = langid.keep_languages(docs, ("en", "de"))
    assert kept == [0, 1, 5]
    assert removed == {2: "fr", 3: "other", 4: "other"}


def test_parse_languages_names_what_is_allowed():
    assert langid.parse_languages("en, de,en") == ("en", "de")
    with pytest.raises(ValueError, match="allowed a comma-separated subset of en,de"):
        langid.parse_languages("en,xx")
