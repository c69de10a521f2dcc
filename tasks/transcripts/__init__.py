"""Meeting transcripts: find the files, read every supported format into one list of utterances.

model       `Utterance`, `Transcript`, `FoundTranscript`, the supported suffixes and formats
discovery   folders expanded into transcript files; the output folder kept out of the inputs
parsing     one file checked, decoded (`tasks.textfiles`), its format detected and parsed;
            the `load_transcript` task gates the utterances on quality
formats/    labelled (plain, "Speaker:" and Markdown text), captions (WebVTT, SRT),
            json_turns (Whisper and turn lists), turns (what they share: splitting, numbering)
"""

from tasks.transcripts.discovery import check_output_folder, discover_transcripts
from tasks.transcripts.formats.json_turns import SPEAKER_KEYS, TEXT_KEYS, TURN_LIST_KEYS
from tasks.transcripts.formats.turns import GROUP_CHARS, LONG_UTTERANCE_CHARS, MAX_LINE_CHARS
from tasks.transcripts.model import (
    FORMATS,
    SUPPORTED_SUFFIXES,
    FoundTranscript,
    Transcript,
    Utterance,
)
from tasks.transcripts.parsing import (
    load_transcript,
    parse_transcript,
    parse_transcript_text,
    utterances_frame,
)

__all__ = [
    "FORMATS",
    "GROUP_CHARS",
    "LONG_UTTERANCE_CHARS",
    "MAX_LINE_CHARS",
    "SPEAKER_KEYS",
    "SUPPORTED_SUFFIXES",
    "TEXT_KEYS",
    "TURN_LIST_KEYS",
    "FoundTranscript",
    "Transcript",
    "Utterance",
    "check_output_folder",
    "discover_transcripts",
    "load_transcript",
    "parse_transcript",
    "parse_transcript_text",
    "utterances_frame",
]
