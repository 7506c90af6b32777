-- Candlewire SQLite schema: the symbol database (owned by backend/symbols.py).
--
-- Applied by `populate.py` (through backend.symbols) with IF NOT EXISTS, so it is safe to run
-- again. The file is in WAL mode (set by the code, not here): the server reads while populate
-- replaces one provider's rows in a single transaction. Other stores (bars, alerts) live in
-- other tables of the same file.

-- One row per dataset row of a provider (DESIGN 5.4). The fields that many rows repeat
-- (source, type, categories, intervals, outputs, source_label) are stored once per shape,
-- in symbol_shapes; the dataset row is source, name, name_label, the shape's other fields,
-- then the row's own extra keys.
--   key         (length of name_lower << 40) | seq: the full-text rowid, so full-text matches
--               come out shortest symbol first without sorting; seq grows across populates
--   id          "source-name", unique: the Tradiny search row id and the listing order
--   name_lower  the symbol lower-cased, for exact and prefix lookups (nlen is its length)
--   words       the search words of name and name_label, as indexed in symbols_fts (a
--               batch of ASCII rows lists the letter words, then the digit words; with
--               them the symbol's words written together, "eurusd" for "EUR/USD", and
--               the suffixes of a word of a script written without spaces), then
--               the lead token: "0a" and the label's first word ("0abitcoin" for "Bitcoin /
--               TetherUS"), which finds the labels that start with a word (a row populated
--               before 2026-12-06 has none: search then ranks them among fewer matches)
--   extra       the row's keys beyond DESIGN 5.4 as a JSON object (a CSV row's path), or NULL
CREATE TABLE IF NOT EXISTS symbols (
    key        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    source     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    name_lower TEXT    NOT NULL,
    nlen       INTEGER NOT NULL,
    name_label TEXT    NOT NULL,
    shape      INTEGER NOT NULL,
    words      TEXT    NOT NULL,
    extra      TEXT
);

-- Exact symbol lookups, and prefix lookups one symbol length at a time (shortest first).
CREATE INDEX IF NOT EXISTS symbols_by_name ON symbols (nlen, name_lower);

-- The shared part of many rows: its fields as a JSON object, and the tag of its words.
-- A shape's id is the seq of its first row, so ids are never reused.
CREATE TABLE IF NOT EXISTS symbol_shapes (
    shape   INTEGER PRIMARY KEY,
    source  TEXT    NOT NULL,
    details TEXT    NOT NULL,
    tag     TEXT    NOT NULL
);

-- The search words of a shape's source, source_label and categories, and `tag`, the
-- full-text token that stands for them in every row that has them (few per source, even
-- when every row has its own shape).
CREATE TABLE IF NOT EXISTS symbol_tags (
    tag    TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    words  TEXT NOT NULL
) WITHOUT ROWID;

-- Full-text index: `words` of each row, and its shape's `tag` (one token per row, instead of
-- the same few words in every row; a search for those words or for one source becomes a
-- search for tags). Contentless: backend.symbols adds rows in batches of ascending keys (a
-- trigger would flush the index at every row); the trigger below removes them, with the
-- same words and tag (so a source's rows are deleted before its shapes). detail = none: the
-- index only knows which rows hold a token, not in which column (cheaper to fill). A search
-- needs no column: a word is letters only or digits only, and a tag has both, as a lead
-- token does (a tag starts with "t", a lead token with "0a"). A database
-- made with detail = column (before 2026-12-03) keeps it, and is searched alike.
CREATE VIRTUAL TABLE IF NOT EXISTS symbols_fts USING fts5 (
    words, tag,
    content = '', detail = none, columnsize = 0,
    tokenize = 'unicode61 remove_diacritics 2'
);
-- Merge 16 segments at a time rather than 4 while populating: it writes about 20% less. Each
-- populate ends with an 'optimize' (one segment: a query reads each segment's doclists).
INSERT INTO symbols_fts (symbols_fts, rank) VALUES ('automerge', 16);

CREATE TRIGGER IF NOT EXISTS symbols_fts_delete AFTER DELETE ON symbols BEGIN
    INSERT INTO symbols_fts (symbols_fts, rowid, words, tag)
    VALUES (
        'delete', old.key, old.words,
        (SELECT tag FROM symbol_shapes WHERE shape = old.shape)
    );
END;

-- How many rows of each source contain each search word of name and name_label (not the
-- lead tokens): the last word of a search term is expanded to the most frequent words that
-- start with it (an FTS5 prefix query over a common prefix would read every matching row).
CREATE TABLE IF NOT EXISTS symbol_words (
    word   TEXT    NOT NULL,
    source TEXT    NOT NULL,
    rows   INTEGER NOT NULL,
    PRIMARY KEY (word, source)
) WITHOUT ROWID;

-- One row per populated source: how many rows it has, and the seq range they were given.
CREATE TABLE IF NOT EXISTS symbol_sources (
    source       TEXT    PRIMARY KEY,
    rows         INTEGER NOT NULL,
    seq_first    INTEGER NOT NULL,
    seq_last     INTEGER NOT NULL,
    populated_at TEXT    NOT NULL
);
