/*
 * protocol.h - the ESP32's side of the serial protocol (hardware/PROTOCOL.md), in plain C99.
 *
 * Encodes telemetry frames and command acknowledgements, and parses the Pi's commands
 * byte by byte. No Arduino, no heap, no floats: the host test suite compiles this file
 * with gcc and checks it against hardware/vectors.json, the same vectors the Python
 * codec (edgepoint/drivers/telemetry) is checked against.
 */
#ifndef EDGEPOINT_PROTOCOL_H
#define EDGEPOINT_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_PROTOCOL_VERSION 1
#define EP_MAX_FRAME_LEN 256   /* "$" through the last CRC digit */
#define EP_MAX_COMMAND_LEN 64  /* the same, for a command from the Pi */
#define EP_FRAME_BUFFER (EP_MAX_FRAME_LEN + 3) /* + CR LF NUL */
#define EP_MAX_CHANNEL 8
#define EP_SEQ_MAX 65535u
#define EP_COMMAND_ID_MAX 65535u
#define EP_PING_MIN_MS 100u
#define EP_PING_MAX_MS 600000u
#define EP_ENERGY_LIMIT_WH 10000000000ull /* at most 10 digits */

/* CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor. */
uint16_t ep_crc16(const uint8_t *data, size_t len);

/* The sequence number after `seq`: 65535 wraps to 1; 0 is sent only at boot. */
uint16_t ep_next_seq(uint16_t seq);

/* One `key=value` extra field of a frame or detail of an ack. */
typedef struct {
    const char *key;
    const char *value;
} ep_field_t;

/* One telemetry reading in the firmware's fixed-point units. */
typedef struct {
    uint16_t seq;
    uint64_t energy_wh;
    int32_t power_dw;       /* 0.1 W  -> written with 1 place */
    int32_t current_ca;     /* 0.01 A -> 2 places */
    int32_t voltage_dv;     /* 0.1 V  -> 1 place */
    int32_t temperature_dc; /* 0.1 C  -> 1 place, may be negative */
    uint8_t channel;        /* 1..EP_MAX_CHANNEL; channel 1 is left implicit */
    const ep_field_t *extra;
    size_t n_extra;
} ep_telemetry_t;

/*
 * Encoders write one whole frame, "\r\n" and a NUL included, into `out`; they return
 * the frame's length without the NUL, or -1 when a value is out of range, an extra is
 * not allowed, or the frame would not fit (in EP_MAX_FRAME_LEN or in `cap`).
 */
int ep_encode_telemetry(char *out, size_t cap, const ep_telemetry_t *t);
int ep_encode_ack_ok(char *out, size_t cap, uint16_t id, const ep_field_t *fields, size_t n);
int ep_encode_ack_err(char *out, size_t cap, uint16_t id, const char *reason);

typedef enum { EP_VERB_PING = 1, EP_VERB_RELAY = 2, EP_VERB_LIMIT = 3 } ep_verb_t;

typedef enum {
    EP_REFUSE_NONE = 0,
    EP_REFUSE_UNKNOWN_VERB,
    EP_REFUSE_BAD_ARGS,
    EP_REFUSE_BAD_CHANNEL,
    EP_REFUSE_OUT_OF_RANGE
} ep_refusal_t;

/* The reason token of an ERR ack ("unknown-verb", ...). */
const char *ep_refusal_text(ep_refusal_t refusal);

/* A parsed command; which fields matter depends on `verb`. */
typedef struct {
    uint16_t id;
    ep_verb_t verb;
    uint32_t timeout_ms;  /* PING */
    uint8_t channel;      /* RLY, LIM */
    uint8_t closed;       /* RLY: 1 closed, 0 open */
    uint16_t limit_da;    /* LIM: 0.1 A */
    ep_refusal_t refusal; /* EP_RX_REFUSED only */
} ep_command_t;

typedef enum {
    EP_RX_NONE = 0,     /* nothing complete yet */
    EP_RX_COMMAND,      /* `cmd` holds a valid command: execute, then ack OK */
    EP_RX_REFUSED,      /* `cmd->id` and `cmd->refusal` are set: ack ERR */
    EP_RX_GARBAGE,      /* noise, a cut frame, a line without "*XXXX": no answer */
    EP_RX_BAD_CHECKSUM, /* no answer: the Pi retries */
    EP_RX_MALFORMED,    /* checksum right, no usable id: no answer */
    EP_RX_OVERLONG      /* longer than EP_MAX_COMMAND_LEN: dropped up to its end */
} ep_rx_event_t;

/* Line assembler state; one per serial port. */
typedef struct {
    uint8_t state;
    uint8_t in_garbage;
    uint8_t len;
    char buf[EP_MAX_COMMAND_LEN];
} ep_rx_t;

void ep_rx_init(ep_rx_t *rx);

/* Feed one received byte; returns what it completed (most bytes: EP_RX_NONE). */
ep_rx_event_t ep_rx_feed(ep_rx_t *rx, uint8_t byte, ep_command_t *cmd);

/* Judge the bytes between "$" and the end of line (both excluded). */
ep_rx_event_t ep_parse_command_line(const char *body, size_t len, ep_command_t *cmd);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPOINT_PROTOCOL_H */
