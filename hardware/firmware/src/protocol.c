/*
 * protocol.c - frame encoders, command parser and CRC of the ESP32 firmware (plain C99).
 * The rules are those of hardware/PROTOCOL.md; hardware/vectors.json pins them down.
 */
#include "protocol.h"

#include <string.h>

uint16_t ep_crc16(const uint8_t *data, size_t len)
{
    uint16_t crc = 0xFFFF;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

uint16_t ep_next_seq(uint16_t seq)
{
    return seq == EP_SEQ_MAX ? 1u : (uint16_t)(seq + 1u);
}

/* -- output ------------------------------------------------------------------------ */

/* A bounded writer: `ok` drops to 0 at the first byte that does not fit. */
typedef struct {
    char *out;
    size_t cap;
    size_t len;
    int ok;
} writer_t;

static void put_char(writer_t *w, char c)
{
    if (w->len + 1 >= w->cap) { /* keep room for the NUL */
        w->ok = 0;
        return;
    }
    w->out[w->len++] = c;
}

static void put_text(writer_t *w, const char *text)
{
    while (*text) {
        put_char(w, *text++);
    }
}

static void put_unsigned(writer_t *w, uint64_t value)
{
    char digits[21];
    int n = 0;
    do {
        digits[n++] = (char)('0' + (int)(value % 10u));
        value /= 10u;
    } while (value);
    while (n) {
        put_char(w, digits[--n]);
    }
}

/* A fixed-point number with `places` decimals: -1234 with 1 place is "-123.4". */
static void put_fixed(writer_t *w, int32_t value, int places)
{
    uint32_t magnitude = value < 0 ? (uint32_t)(-(int64_t)value) : (uint32_t)value;
    uint32_t scale = 1;
    for (int i = 0; i < places; i++) {
        scale *= 10u;
    }
    if (value < 0) { /* never "-0.0": the magnitude is not zero here */
        put_char(w, '-');
    }
    put_unsigned(w, magnitude / scale);
    put_char(w, '.');
    uint32_t fraction = magnitude % scale;
    for (uint32_t digit = scale / 10u; digit; digit /= 10u) {
        put_char(w, (char)('0' + (int)(fraction / digit % 10u)));
    }
}

static const char HEX[] = "0123456789ABCDEF";

/* Close a frame whose "$" sits at out[0]: "*CRC\r\n" and the NUL. */
static int finish_frame(writer_t *w, size_t max_len)
{
    if (!w->ok) {
        return -1;
    }
    uint16_t crc = ep_crc16((const uint8_t *)w->out + 1, w->len - 1);
    put_char(w, '*');
    for (int shift = 12; shift >= 0; shift -= 4) {
        put_char(w, HEX[(crc >> shift) & 0xF]);
    }
    if (!w->ok || w->len > max_len) {
        return -1;
    }
    put_text(w, "\r\n");
    if (!w->ok) {
        return -1;
    }
    w->out[w->len] = '\0';
    return (int)w->len;
}

static int is_key(const char *key)
{
    size_t n = strlen(key);
    if (n < 1 || n > 32) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = key[i];
        int letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        int other = (c >= '0' && c <= '9') || c == '.' || c == '-';
        if (!(letter || (i > 0 && other))) {
            return 0;
        }
    }
    return 1;
}

static int is_value(const char *value)
{
    size_t n = strlen(value);
    if (n > 64) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c < 0x20 || c > 0x7E || c == ',' || c == '*' || c == '$') {
            return 0;
        }
    }
    return 1;
}

static int put_fields(writer_t *w, const ep_field_t *fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_key(fields[i].key) || !is_value(fields[i].value)) {
            return 0;
        }
        put_char(w, ',');
        put_text(w, fields[i].key);
        put_char(w, '=');
        put_text(w, fields[i].value);
    }
    return 1;
}

int ep_encode_telemetry(char *out, size_t cap, const ep_telemetry_t *t)
{
    writer_t w = {out, cap, 0, 1};
    if (t->energy_wh >= EP_ENERGY_LIMIT_WH || t->channel < 1 || t->channel > EP_MAX_CHANNEL) {
        return -1;
    }
    for (size_t i = 0; i < t->n_extra; i++) {
        if (strcmp(t->extra[i].key, "ch") == 0) { /* the channel has its own field */
            return -1;
        }
    }
    put_char(&w, '$');
    put_unsigned(&w, EP_PROTOCOL_VERSION);
    put_char(&w, ',');
    put_unsigned(&w, t->seq);
    put_char(&w, ',');
    put_unsigned(&w, t->energy_wh);
    put_char(&w, ',');
    put_fixed(&w, t->power_dw, 1);
    put_char(&w, ',');
    put_fixed(&w, t->current_ca, 2);
    put_char(&w, ',');
    put_fixed(&w, t->voltage_dv, 1);
    put_char(&w, ',');
    put_fixed(&w, t->temperature_dc, 1);
    if (t->channel != 1) {
        put_text(&w, ",ch=");
        put_unsigned(&w, t->channel);
    }
    if (!put_fields(&w, t->extra, t->n_extra)) {
        return -1;
    }
    return finish_frame(&w, EP_MAX_FRAME_LEN);
}

static int valid_id(uint16_t id)
{
    return id >= 1u; /* uint16_t cannot exceed EP_COMMAND_ID_MAX */
}

int ep_encode_ack_ok(char *out, size_t cap, uint16_t id, const ep_field_t *fields, size_t n)
{
    writer_t w = {out, cap, 0, 1};
    if (!valid_id(id)) {
        return -1;
    }
    put_text(&w, "$A,");
    put_unsigned(&w, id);
    put_text(&w, ",OK");
    if (!put_fields(&w, fields, n)) {
        return -1;
    }
    return finish_frame(&w, EP_MAX_FRAME_LEN);
}

int ep_encode_ack_err(char *out, size_t cap, uint16_t id, const char *reason)
{
    writer_t w = {out, cap, 0, 1};
    size_t n = strlen(reason);
    if (!valid_id(id) || n < 1 || n > 32 || reason[0] < 'a' || reason[0] > 'z') {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char c = reason[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
            return -1;
        }
    }
    put_text(&w, "$A,");
    put_unsigned(&w, id);
    put_text(&w, ",ERR,");
    put_text(&w, reason);
    return finish_frame(&w, EP_MAX_FRAME_LEN);
}

const char *ep_refusal_text(ep_refusal_t refusal)
{
    switch (refusal) {
    case EP_REFUSE_UNKNOWN_VERB:
        return "unknown-verb";
    case EP_REFUSE_BAD_ARGS:
        return "bad-args";
    case EP_REFUSE_BAD_CHANNEL:
        return "bad-channel";
    case EP_REFUSE_OUT_OF_RANGE:
        return "out-of-range";
    case EP_REFUSE_NONE:
    default:
        return "none";
    }
}

/* -- input ------------------------------------------------------------------------- */

enum { RX_OUTSIDE = 0, RX_IN_FRAME = 1, RX_SKIPPING = 2 };

void ep_rx_init(ep_rx_t *rx)
{
    memset(rx, 0, sizeof(*rx));
    rx->state = RX_OUTSIDE;
}

ep_rx_event_t ep_rx_feed(ep_rx_t *rx, uint8_t byte, ep_command_t *cmd)
{
    int eol = byte == '\r' || byte == '\n';
    if (byte == '$') {
        int cut = rx->state == RX_IN_FRAME;
        rx->state = RX_IN_FRAME;
        rx->len = 0;
        rx->in_garbage = 0;
        return cut ? EP_RX_GARBAGE : EP_RX_NONE;
    }
    if (rx->state == RX_OUTSIDE) {
        if (eol) {
            rx->in_garbage = 0;
            return EP_RX_NONE;
        }
        if (rx->in_garbage) {
            return EP_RX_NONE;
        }
        rx->in_garbage = 1; /* one event per run of noise, however long */
        return EP_RX_GARBAGE;
    }
    if (rx->state == RX_SKIPPING) {
        if (eol) {
            rx->state = RX_OUTSIDE;
        }
        return EP_RX_NONE;
    }
    if (eol) {
        rx->state = RX_OUTSIDE;
        return ep_parse_command_line(rx->buf, rx->len, cmd);
    }
    if ((size_t)rx->len + 1u >= EP_MAX_COMMAND_LEN) { /* + 1 for the "$" */
        rx->state = RX_SKIPPING;
        rx->len = 0;
        return EP_RX_OVERLONG;
    }
    rx->buf[rx->len++] = (char)byte;
    return EP_RX_NONE;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

/* Digits only, between min and max of them; the value in *value. */
static int parse_digits(const char *text, size_t len, size_t min, size_t max, uint32_t *value)
{
    if (len < min || len > max) {
        return 0;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9') {
            return 0;
        }
        v = v * 10u + (uint32_t)(text[i] - '0');
    }
    *value = v;
    return 1;
}

/* `[0-9]{1,3}(\.[0-9])?` as tenths. */
static int parse_tenths(const char *text, size_t len, uint32_t *tenths)
{
    uint32_t whole = 0;
    uint32_t fraction = 0;
    const char *dot = memchr(text, '.', len);
    if (dot == NULL) {
        if (!parse_digits(text, len, 1, 3, &whole)) {
            return 0;
        }
    } else {
        size_t head = (size_t)(dot - text);
        if (!parse_digits(text, head, 1, 3, &whole) ||
            !parse_digits(dot + 1, len - head - 1, 1, 1, &fraction)) {
            return 0;
        }
    }
    *tenths = whole * 10u + fraction;
    return 1;
}

#define MAX_FIELDS 8

typedef struct {
    const char *text;
    size_t len;
} field_t;

static int field_is(const field_t *f, const char *word)
{
    size_t n = strlen(word);
    return f->len == n && memcmp(f->text, word, n) == 0;
}

static ep_refusal_t parse_args(const field_t *verb, const field_t *args, size_t n, ep_command_t *cmd)
{
    uint32_t value = 0;
    uint32_t channel = 0;
    if (field_is(verb, "PING")) {
        cmd->verb = EP_VERB_PING;
        if (n != 1 || !parse_digits(args[0].text, args[0].len, 1, 6, &value)) {
            return EP_REFUSE_BAD_ARGS;
        }
        if (value < EP_PING_MIN_MS || value > EP_PING_MAX_MS) {
            return EP_REFUSE_OUT_OF_RANGE;
        }
        cmd->timeout_ms = value;
        return EP_REFUSE_NONE;
    }
    if (field_is(verb, "RLY")) {
        cmd->verb = EP_VERB_RELAY;
        if (n != 2 || !parse_digits(args[0].text, args[0].len, 1, 1, &channel) ||
            !(field_is(&args[1], "0") || field_is(&args[1], "1"))) {
            return EP_REFUSE_BAD_ARGS;
        }
        if (channel < 1 || channel > EP_MAX_CHANNEL) {
            return EP_REFUSE_BAD_CHANNEL;
        }
        cmd->channel = (uint8_t)channel;
        cmd->closed = field_is(&args[1], "1") ? 1u : 0u;
        return EP_REFUSE_NONE;
    }
    if (field_is(verb, "LIM")) {
        cmd->verb = EP_VERB_LIMIT;
        if (n != 2 || !parse_digits(args[0].text, args[0].len, 1, 1, &channel) ||
            !parse_tenths(args[1].text, args[1].len, &value)) {
            return EP_REFUSE_BAD_ARGS;
        }
        if (channel < 1 || channel > EP_MAX_CHANNEL) {
            return EP_REFUSE_BAD_CHANNEL;
        }
        cmd->channel = (uint8_t)channel;
        cmd->limit_da = (uint16_t)value;
        return EP_REFUSE_NONE;
    }
    return EP_REFUSE_UNKNOWN_VERB;
}

ep_rx_event_t ep_parse_command_line(const char *body, size_t len, ep_command_t *cmd)
{
    memset(cmd, 0, sizeof(*cmd));
    /* `payload*XXXX`: exactly one "*", followed by four hex digits. */
    if (len < 5 || body[len - 5] != '*' || memchr(body, '*', len - 5) != NULL) {
        return EP_RX_GARBAGE;
    }
    uint16_t crc_sent = 0;
    for (size_t i = len - 4; i < len; i++) {
        int digit = hex_value(body[i]);
        if (digit < 0) {
            return EP_RX_GARBAGE;
        }
        crc_sent = (uint16_t)((crc_sent << 4) | (uint16_t)digit);
    }
    size_t payload_len = len - 5;
    if (ep_crc16((const uint8_t *)body, payload_len) != crc_sent) {
        return EP_RX_BAD_CHECKSUM;
    }
    field_t fields[MAX_FIELDS];
    size_t n = 0;
    size_t start = 0;
    for (size_t i = 0; i <= payload_len; i++) {
        if (i == payload_len || body[i] == ',') {
            if (n == MAX_FIELDS) { /* more than any command has: bad arguments (below) */
                n++;
                break;
            }
            fields[n].text = body + start;
            fields[n].len = i - start;
            n++;
            start = i + 1;
        }
    }
    uint32_t id = 0;
    if (n < 3 || !field_is(&fields[0], "C") ||
        !parse_digits(fields[1].text, fields[1].len, 1, 5, &id) || id < 1 ||
        id > EP_COMMAND_ID_MAX) {
        return EP_RX_MALFORMED;
    }
    cmd->id = (uint16_t)id;
    size_t n_args = n > MAX_FIELDS ? MAX_FIELDS : n - 3; /* too many: never a valid count */
    cmd->refusal = parse_args(&fields[2], fields + 3, n_args, cmd);
    return cmd->refusal == EP_REFUSE_NONE ? EP_RX_COMMAND : EP_RX_REFUSED;
}
