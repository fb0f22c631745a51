/*
 * vector_runner.c - host harness for protocol.c: the test suite (tests/drivers/telemetry/
 * test_firmware_protocol.py) compiles it with gcc, feeds it the cases of
 * hardware/vectors.json one per line on stdin and compares what it prints.
 *
 *   crc <hex>                                          -> CRC as 4 hex digits
 *   tel <seq> <wh> <dW> <cA> <dV> <dC> <ch> [k=hex]... -> the frame, hex ("error" if refused)
 *   ackok <id> [k=hex]...                              -> the frame, hex
 *   ackerr <id> <reason>                               -> the frame, hex
 *   rx <hex>                                           -> one line per event, then "end"
 *
 * Values of extras are hex so that spaces and "=" need no quoting.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/protocol.h"

#define MAX_TOKENS 40
#define LINE_MAX_LEN 8192

static char decoded[MAX_TOKENS][300];

static size_t unhex(const char *hex, char *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    if (n >= cap) {
        n = cap - 1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned int byte = 0;
        sscanf(hex + 2 * i, "%2x", &byte);
        out[i] = (char)byte;
    }
    out[n] = '\0';
    return n;
}

static void print_hex(const char *data, int len)
{
    if (len < 0) {
        puts("error");
        return;
    }
    for (int i = 0; i < len; i++) {
        printf("%02x", (unsigned char)data[i]);
    }
    putchar('\n');
}

/* key=hexvalue tokens into fields (decoded values kept in `decoded`). */
static size_t to_fields(char **tokens, size_t n, ep_field_t *fields)
{
    for (size_t i = 0; i < n; i++) {
        char *eq = strchr(tokens[i], '=');
        if (eq == NULL) {
            fields[i].key = tokens[i];
            fields[i].value = "";
            continue;
        }
        *eq = '\0';
        unhex(eq + 1, decoded[i], sizeof(decoded[i]));
        fields[i].key = tokens[i];
        fields[i].value = decoded[i];
    }
    return n;
}

static void print_event(ep_rx_event_t event, const ep_command_t *cmd)
{
    switch (event) {
    case EP_RX_COMMAND:
        if (cmd->verb == EP_VERB_PING) {
            printf("command %u PING %lu\n", cmd->id, (unsigned long)cmd->timeout_ms);
        } else if (cmd->verb == EP_VERB_RELAY) {
            printf("command %u RLY %u %u\n", cmd->id, cmd->channel, cmd->closed);
        } else {
            printf("command %u LIM %u %u\n", cmd->id, cmd->channel, cmd->limit_da);
        }
        break;
    case EP_RX_REFUSED:
        printf("refused %u %s\n", cmd->id, ep_refusal_text(cmd->refusal));
        break;
    case EP_RX_GARBAGE:
        puts("garbage");
        break;
    case EP_RX_BAD_CHECKSUM:
        puts("bad_checksum");
        break;
    case EP_RX_MALFORMED:
        puts("malformed");
        break;
    case EP_RX_OVERLONG:
        puts("overlong");
        break;
    case EP_RX_NONE:
    default:
        break;
    }
}

int main(void)
{
    static char line[LINE_MAX_LEN];
    static char data[LINE_MAX_LEN];
    char frame[EP_FRAME_BUFFER];
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char *tokens[MAX_TOKENS];
        size_t n = 0;
        for (char *tok = strtok(line, " \r\n"); tok != NULL && n < MAX_TOKENS;
             tok = strtok(NULL, " \r\n")) {
            tokens[n++] = tok;
        }
        if (n == 0) {
            continue;
        }
        ep_field_t fields[MAX_TOKENS];
        if (strcmp(tokens[0], "crc") == 0) {
            size_t len = n > 1 ? unhex(tokens[1], data, sizeof(data)) : 0;
            printf("%04X\n", ep_crc16((const uint8_t *)data, len));
        } else if (strcmp(tokens[0], "tel") == 0 && n >= 8) {
            ep_telemetry_t t;
            t.seq = (uint16_t)strtoul(tokens[1], NULL, 10);
            t.energy_wh = strtoull(tokens[2], NULL, 10);
            t.power_dw = (int32_t)strtol(tokens[3], NULL, 10);
            t.current_ca = (int32_t)strtol(tokens[4], NULL, 10);
            t.voltage_dv = (int32_t)strtol(tokens[5], NULL, 10);
            t.temperature_dc = (int32_t)strtol(tokens[6], NULL, 10);
            t.channel = (uint8_t)strtoul(tokens[7], NULL, 10);
            t.n_extra = to_fields(tokens + 8, n - 8, fields);
            t.extra = fields;
            print_hex(frame, ep_encode_telemetry(frame, sizeof(frame), &t));
        } else if (strcmp(tokens[0], "ackok") == 0 && n >= 2) {
            size_t count = to_fields(tokens + 2, n - 2, fields);
            uint16_t id = (uint16_t)strtoul(tokens[1], NULL, 10);
            print_hex(frame, ep_encode_ack_ok(frame, sizeof(frame), id, fields, count));
        } else if (strcmp(tokens[0], "ackerr") == 0 && n == 3) {
            uint16_t id = (uint16_t)strtoul(tokens[1], NULL, 10);
            print_hex(frame, ep_encode_ack_err(frame, sizeof(frame), id, tokens[2]));
        } else if (strcmp(tokens[0], "rx") == 0) {
            size_t len = n > 1 ? unhex(tokens[1], data, sizeof(data)) : 0;
            ep_rx_t rx;
            ep_command_t cmd;
            ep_rx_init(&rx);
            for (size_t i = 0; i < len; i++) {
                print_event(ep_rx_feed(&rx, (uint8_t)data[i], &cmd), &cmd);
            }
            puts("end");
        } else {
            printf("unknown %s\n", tokens[0]);
        }
        fflush(stdout);
    }
    return 0;
}
