"""`language_id`: right on hand-written sentences in 12 languages, identical to py3langid row by
row on real pool rows, and its keep-list / threshold decisions, columns and report."""

from __future__ import annotations

import gzip
import json

import pytest

from thresher.core.columns import set_columns
from thresher.stages.quality import language_id
from thresher.stages.quality.language_id import BatchIdentifier, LanguageId, batch_identifier, encode, load_identifier
from thresher.testing.harness import make_batch, run_stage

# Written for this test: the same ten everyday sentences in each language.
SENTENCES: dict[str, list[str]] = {
    "en": [
        "The library opens at nine in the morning and closes late on Fridays.",
        "She forgot her umbrella on the train and got soaked walking home.",
        "Our neighbours are planting tomatoes and beans in the garden this spring.",
        "Could you please send me the report before the meeting tomorrow?",
        "The bridge was closed for repairs, so we took the long way around.",
        "He has been learning to play the piano since he was seven years old.",
        "Most of the apples fell from the tree during last night's storm.",
        "I think the new bakery on the corner sells the best bread in town.",
        "The children were laughing loudly while they played in the snow.",
        "After dinner we usually walk the dog along the river.",
    ],
    "de": [
        "Die Bibliothek öffnet um neun Uhr morgens und schließt freitags spät.",
        "Sie hat ihren Regenschirm im Zug vergessen und ist nass geworden.",
        "Unsere Nachbarn pflanzen in diesem Frühling Tomaten und Bohnen im Garten.",
        "Könnten Sie mir bitte den Bericht vor der Besprechung morgen schicken?",
        "Die Brücke war wegen Reparaturen gesperrt, also fuhren wir einen Umweg.",
        "Er lernt Klavier spielen, seit er sieben Jahre alt ist.",
        "Die meisten Äpfel sind im Sturm letzte Nacht vom Baum gefallen.",
        "Ich glaube, die neue Bäckerei an der Ecke verkauft das beste Brot der Stadt.",
        "Die Kinder lachten laut, während sie im Schnee spielten.",
        "Nach dem Abendessen gehen wir normalerweise mit dem Hund am Fluss spazieren.",
    ],
    "fr": [
        "La bibliothèque ouvre à neuf heures du matin et ferme tard le vendredi.",
        "Elle a oublié son parapluie dans le train et elle est rentrée trempée.",
        "Nos voisins plantent des tomates et des haricots dans le jardin ce printemps.",
        "Pourriez-vous m'envoyer le rapport avant la réunion de demain, s'il vous plaît ?",
        "Le pont était fermé pour travaux, alors nous avons pris le chemin le plus long.",
        "Il apprend à jouer du piano depuis l'âge de sept ans.",
        "La plupart des pommes sont tombées de l'arbre pendant la tempête d'hier soir.",
        "Je pense que la nouvelle boulangerie du coin vend le meilleur pain de la ville.",
        "Les enfants riaient très fort pendant qu'ils jouaient dans la neige.",
        "Après le dîner, nous promenons généralement le chien le long de la rivière.",
    ],
    "es": [
        "La biblioteca abre a las nueve de la mañana y cierra tarde los viernes.",
        "Se olvidó el paraguas en el tren y llegó a casa empapada.",
        "Nuestros vecinos están plantando tomates y judías en el jardín esta primavera.",
        "¿Podría enviarme el informe antes de la reunión de mañana, por favor?",
        "El puente estaba cerrado por obras, así que dimos un rodeo muy largo.",
        "Está aprendiendo a tocar el piano desde que tenía siete años.",
        "La mayoría de las manzanas cayeron del árbol durante la tormenta de anoche.",
        "Creo que la nueva panadería de la esquina vende el mejor pan de la ciudad.",
        "Los niños se reían a carcajadas mientras jugaban en la nieve.",
        "Después de cenar solemos pasear al perro por la orilla del río.",
    ],
    "it": [
        "La biblioteca apre alle nove del mattino e chiude tardi il venerdì.",
        "Ha dimenticato l'ombrello sul treno ed è tornata a casa bagnata fradicia.",
        "I nostri vicini stanno piantando pomodori e fagioli nell'orto questa primavera.",
        "Potrebbe mandarmi la relazione prima della riunione di domani, per favore?",
        "Il ponte era chiuso per lavori, quindi abbiamo fatto la strada più lunga.",
        "Sta imparando a suonare il pianoforte da quando aveva sette anni.",
        "La maggior parte delle mele è caduta dall'albero durante il temporale di ieri sera.",
        "Credo che il nuovo panificio all'angolo venda il pane migliore della città.",
        "I bambini ridevano forte mentre giocavano nella neve.",
        "Dopo cena di solito portiamo il cane a passeggio lungo il fiume.",
    ],
    "pt": [
        "A biblioteca abre às nove da manhã e fecha tarde às sextas-feiras.",
        "Ela esqueceu o guarda-chuva no comboio e chegou a casa encharcada.",
        "Os nossos vizinhos estão a plantar tomates e feijões na horta nesta primavera.",
        "Poderia enviar-me o relatório antes da reunião de amanhã, por favor?",
        "A ponte estava fechada para obras, por isso fizemos o caminho mais comprido.",
        "Ele aprende a tocar piano desde que tinha sete anos de idade.",
        "A maioria das maçãs caiu da árvore durante a tempestade de ontem à noite.",
        "Acho que a nova padaria da esquina vende o melhor pão da cidade.",
        "As crianças riam muito alto enquanto brincavam na neve.",
        "Depois do jantar costumamos passear o cão ao longo do rio.",
    ],
    "nl": [
        "De bibliotheek gaat om negen uur 's ochtends open en sluit op vrijdag laat.",
        "Ze vergat haar paraplu in de trein en kwam doornat thuis.",
        "Onze buren planten dit voorjaar tomaten en bonen in de tuin.",
        "Kunt u mij het verslag alstublieft voor de vergadering van morgen sturen?",
        "De brug was dicht vanwege werkzaamheden, dus namen we de lange weg.",
        "Hij leert al piano spelen sinds hij zeven jaar oud was.",
        "De meeste appels zijn tijdens de storm van vannacht uit de boom gevallen.",
        "Ik denk dat de nieuwe bakker op de hoek het lekkerste brood van de stad verkoopt.",
        "De kinderen lachten hard terwijl ze in de sneeuw speelden.",
        "Na het avondeten laten we de hond meestal uit langs de rivier.",
    ],
    "sv": [
        "Biblioteket öppnar klockan nio på morgonen och stänger sent på fredagar.",
        "Hon glömde sitt paraply på tåget och blev genomblöt på vägen hem.",
        "Våra grannar planterar tomater och bönor i trädgården i vår.",
        "Kan du vara snäll och skicka rapporten till mig före mötet i morgon?",
        "Bron var stängd på grund av reparationer, så vi tog den långa vägen.",
        "Han har lärt sig spela piano sedan han var sju år gammal.",
        "De flesta äpplena föll från trädet under stormen i natt.",
        "Jag tror att det nya bageriet på hörnet säljer stadens godaste bröd.",
        "Barnen skrattade högt medan de lekte i snön.",
        "Efter middagen brukar vi gå ut med hunden längs ån.",
    ],
    "pl": [
        "Biblioteka jest otwarta od dziewiątej rano i w piątki zamyka się późno.",
        "Zapomniała parasola w pociągu i wróciła do domu całkiem przemoczona.",
        "Nasi sąsiedzi sadzą tej wiosny pomidory i fasolę w ogrodzie.",
        "Czy mógłby pan przesłać mi raport przed jutrzejszym spotkaniem?",
        "Most był zamknięty z powodu remontu, więc pojechaliśmy dłuższą drogą.",
        "Uczy się grać na pianinie, odkąd skończył siedem lat.",
        "Większość jabłek spadła z drzewa podczas wczorajszej burzy.",
        "Myślę, że nowa piekarnia na rogu sprzedaje najlepszy chleb w mieście.",
        "Dzieci głośno się śmiały, bawiąc się na śniegu.",
        "Po kolacji zwykle wychodzimy z psem na spacer wzdłuż rzeki.",
    ],
    "ru": [
        "Библиотека открывается в девять утра и по пятницам закрывается поздно.",
        "Она забыла зонтик в поезде и пришла домой совсем промокшей.",
        "Наши соседи этой весной сажают в саду помидоры и фасоль.",
        "Не могли бы вы прислать мне отчёт до завтрашнего совещания?",
        "Мост был закрыт на ремонт, поэтому мы поехали длинной дорогой.",
        "Он учится играть на пианино с тех пор, как ему исполнилось семь лет.",
        "Большая часть яблок упала с дерева во время вчерашней грозы.",
        "Мне кажется, что в новой пекарне на углу продают лучший хлеб в городе.",
        "Дети громко смеялись, играя в снегу.",
        "После ужина мы обычно гуляем с собакой вдоль реки.",
    ],
    "tr": [
        "Kütüphane sabah dokuzda açılıyor ve cuma günleri geç kapanıyor.",
        "Şemsiyesini trende unuttu ve eve sırılsıklam geldi.",
        "Komşularımız bu bahar bahçeye domates ve fasulye ekiyorlar.",
        "Raporu yarınki toplantıdan önce bana gönderebilir misiniz lütfen?",
        "Köprü onarım nedeniyle kapalıydı, bu yüzden uzun yoldan gittik.",
        "Yedi yaşından beri piyano çalmayı öğreniyor.",
        "Elmaların çoğu dün geceki fırtınada ağaçtan düştü.",
        "Bence köşedeki yeni fırın şehrin en güzel ekmeğini satıyor.",
        "Çocuklar karda oynarken yüksek sesle gülüyorlardı.",
        "Akşam yemeğinden sonra genellikle köpeği nehir kenarında gezdiririz.",
    ],
    "fi": [
        "Kirjasto aukeaa yhdeksältä aamulla ja sulkeutuu perjantaisin myöhään.",
        "Hän unohti sateenvarjonsa junaan ja kastui matkalla kotiin.",
        "Naapurimme istuttavat tänä keväänä puutarhaan tomaatteja ja papuja.",
        "Voisitko lähettää raportin minulle ennen huomista kokousta?",
        "Silta oli suljettu korjausten takia, joten ajoimme pidempää reittiä.",
        "Hän on opetellut soittamaan pianoa seitsemänvuotiaasta asti.",
        "Suurin osa omenoista putosi puusta eilisillan myrskyssä.",
        "Uskon, että kulman uusi leipomo myy kaupungin parasta leipää.",
        "Lapset nauroivat äänekkäästi leikkiessään lumessa.",
        "Illallisen jälkeen käytämme yleensä koiran lenkillä joen rannassa.",
    ],
}


def test_hand_written_sentences_in_twelve_languages_are_identified():
    ident = batch_identifier()
    texts = [s for ss in SENTENCES.values() for s in ss]
    langs, scores = ident.classify(texts, 2000)
    truth = [lang for lang, ss in SENTENCES.items() for _ in ss]
    right = sum(a == b for a, b in zip(langs, truth, strict=True))
    assert len(SENTENCES) >= 10 and all(len(ss) == 10 for ss in SENTENCES.values())
    assert right / len(texts) >= 0.95, [(t, a) for t, a in zip(truth, langs, strict=True) if t != a]
    assert ((scores > 0) & (scores <= 1)).all()


def test_long_texts_are_walked_in_chunks_with_the_same_answers(monkeypatch):
    texts = [" ".join(ss) for ss in SENTENCES.values()] + ["", "x"] + [s for ss in SENTENCES.values() for s in ss]
    whole = batch_identifier().classify(texts, 2000)
    monkeypatch.setattr(language_id, "GRID_BYTES", 700)  # ~1-5 texts per chunk
    chunked = batch_identifier().classify(texts, 2000)
    assert chunked[0] == whole[0] and (chunked[1] == whole[1]).all()
    assert whole[0][:len(SENTENCES)] == list(SENTENCES)


@pytest.mark.slow
def test_batched_scoring_equals_the_library_row_by_row(shared_data):
    texts = []
    with gzip.open(shared_data / "general_pool" / "pool.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 97 == 0:
                texts.append(json.loads(line)["text"])
            if len(texts) == 300:
                break
    texts += [s for ss in SENTENCES.values() for s in ss[:2]] + ["", "1234 5678", "ALL CAPS SHOUTING HERE", "é" * 3000]
    lib = load_identifier()
    langs, scores = BatchIdentifier(lib).classify(texts, 500)
    assert sorted(set(langs[:300])) == ["en"]  # the pool is English; the extra rows are not
    for text, lang, score in zip(texts, langs, scores, strict=True):
        want_lang, want_score = lib.classify(encode(text, 500))
        assert lang == want_lang and score == pytest.approx(want_score, abs=1e-5), text[:60]


@pytest.mark.slow
def test_keep_list_and_threshold_drop_with_reasons_and_report_counts():
    rows = [{"text": SENTENCES[lang][i]} for lang in ("en", "de", "fr") for i in range(3)]
    rows.append({"text": "12345"})  # no language at all: a low score
    res = run_stage(LanguageId, rows, {"keep": ["en", "de"], "min_score": 0.5})
    assert res.kept.column("lang").to_pylist() == ["en"] * 3 + ["de"] * 3
    assert all(0.5 <= s <= 1 for s in res.kept.column("lang_score").to_pylist())
    assert res.dropped.column("drop_reason").to_pylist() == ["lang_not_kept"] * 3 + ["lang_low_score"]
    assert res.dropped.column("lang").to_pylist()[:3] == ["fr"] * 3
    assert res.counters["language_id/dropped/lang_not_kept/test"] == 3
    assert res.counters["language_id/dropped/lang_low_score/test"] == 1
    assert res.report["rows"] == 10 and res.report["kept"] == 6
    assert res.report["kept_languages"] == {"de": 3, "en": 3}
    assert res.report["languages"]["fr"] == 3 and sum(res.report["languages"].values()) == 10


def _decide(params: dict, texts: list[str]):
    stage = LanguageId(params)
    batch = make_batch([{"text": t} for t in texts])
    batch = set_columns(batch, stage.score(batch))
    keep, reason = stage.decide(batch)
    return batch.column("lang").to_pylist(), [None if k else r for k, r in zip(keep, reason, strict=True)]


def test_keep_list_threshold_and_tag_only_decisions_without_a_pipeline():
    texts = [SENTENCES["pl"][0], SENTENCES["tr"][1], SENTENCES["en"][2], "12345"]
    assert _decide({}, texts) == (["pl", "tr", "en", "zxx"], [None] * 4)  # zxx: no linguistic content
    assert _decide({"keep": ["en", "tr"], "min_score": 0.5}, texts)[1] == [
        "lang_not_kept", None, None, "lang_low_score"]
    assert LanguageId({"keep": ["en", "english", "xx"]}).check() == [
        "params.keep: unknown language code(s) ['english', 'xx']; py3langid knows: "
        + ", ".join(sorted(set(load_identifier().nb_classes)))]
