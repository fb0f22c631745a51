/*
 * main.cpp - edgepoint ESP32 firmware (Arduino core 2.x for ESP32).
 *
 * Every second, per channel: measure voltage, current, real power and the contactor's
 * temperature, add the energy to the register (kept in NVS at every whole Wh, before
 * a frame with it leaves), and send one telemetry frame (hardware/PROTOCOL.md).
 * In between: execute the Pi's commands and acknowledge them, and keep the watchdog:
 * this board's relays (in series with the Pi's) close only while the Pi's pings keep
 * coming, and latch open when they stop, until the Pi reports its own relay open.
 *
 * The frame, ack and command code is protocol.c (plain C, tested on the host).
 */
#include <Arduino.h>
#include <Preferences.h>
#include <esp_system.h>
#include <esp_task_wdt.h>
#include <math.h>
#include <stdio.h>

extern "C" {
#include "protocol.h"
}
#include "board.h"

#ifndef EDGEPOINT_FW_VERSION
#define EDGEPOINT_FW_VERSION "dev"
#endif

/* The ESP32 reboots itself if loop() stops running for this long (its relays are
 * open while it boots). */
static const uint32_t TASK_WDT_S = 5;
static const int PILOT_PWM_BITS = 10;
static const uint32_t PILOT_PWM_HZ = 1000;
static const int32_t PILOT_MIN_DA = 60; /* J1772: below 6 A the car may not charge */

struct Channel {
    double energy_wh;      /* the register, fraction included (RAM) */
    uint64_t stored_wh;    /* whole Wh last written to NVS */
    int32_t power_dw;      /* last window's real power, 0.1 W */
    int32_t current_ca;    /* RMS current, 0.01 A */
    int32_t temperature_dc;
    bool latched;          /* opened by the watchdog; released by RLY ch 0 */
    int32_t limit_da;      /* current limit set by the Pi, 0.1 A; -1: none */
};

static Channel channels[EP_CHANNELS];
static int32_t voltage_dv;
static Preferences nvs;
static ep_rx_t rx;
static uint16_t seq = 0;
static bool first_frame = true;
static const char *boot_reason = "other";

/* The watchdog: armed by the first ping after boot. */
static bool armed = false;
static bool expired = false;
static uint32_t last_ping_ms = 0;
static uint32_t ping_timeout_ms = 0;

/* -- relays and watchdog ------------------------------------------------------------ */

static bool alive(uint32_t now)
{
    return armed && (uint32_t)(now - last_ping_ms) <= ping_timeout_ms;
}

/* Called from every loop pass and after every command: the relays follow at once. */
static void apply_relays(uint32_t now)
{
    if (armed && !expired && !alive(now)) {
        /* The Pi went quiet: open everything, and keep it open until the Pi, back,
         * says its own relay is open (it has seen the cut and faulted the session). */
        expired = true;
        for (int i = 0; i < EP_CHANNELS; i++) {
            channels[i].latched = true;
        }
    }
    bool ok = alive(now);
    for (int i = 0; i < EP_CHANNELS; i++) {
        digitalWrite(RELAY_PIN[i], (ok && !channels[i].latched) ? HIGH : LOW);
    }
}

static bool contact_closed(int i)
{
    return digitalRead(SENSE_PIN[i]) == LOW; /* the auxiliary contact pulls it to GND */
}

static void set_pilot(int i)
{
    int32_t da = channels[i].limit_da < 0 ? MAX_CURRENT_DA : channels[i].limit_da;
    uint32_t full = (1u << PILOT_PWM_BITS) - 1u;
    uint32_t duty;
    if (da < PILOT_MIN_DA) {
        duty = full; /* a steady +12 V: "no charging now" */
    } else {
        /* J1772: duty cycle in % = amps / 0.6, for 6..51 A. */
        duty = (uint32_t)((int64_t)da * (int64_t)full / 600);
    }
    ledcWrite(i, duty);
}

/* -- commands --------------------------------------------------------------------- */

static void send(const char *frame, int length)
{
    if (length > 0) {
        Serial.write((const uint8_t *)frame, (size_t)length);
    }
}

static void execute(ep_rx_event_t event, const ep_command_t *cmd)
{
    char frame[EP_FRAME_BUFFER];
    if (event == EP_RX_REFUSED) {
        send(frame, ep_encode_ack_err(frame, sizeof frame, cmd->id, ep_refusal_text(cmd->refusal)));
        return;
    }
    uint32_t now = millis();
    if (cmd->verb == EP_VERB_PING) {
        armed = true;
        expired = false; /* the latched channels stay open: see RLY */
        last_ping_ms = now;
        ping_timeout_ms = cmd->timeout_ms;
        apply_relays(now);
        send(frame, ep_encode_ack_ok(frame, sizeof frame, cmd->id, NULL, 0));
        return;
    }
    if (cmd->channel > EP_CHANNELS) {
        send(frame, ep_encode_ack_err(frame, sizeof frame, cmd->id, "bad-channel"));
        return;
    }
    int i = cmd->channel - 1;
    char value[12];
    ep_field_t field;
    if (cmd->verb == EP_VERB_RELAY) {
        if (!cmd->closed) {
            channels[i].latched = false;
        }
        apply_relays(now);
        snprintf(value, sizeof value, "%d", contact_closed(i) ? 1 : 0);
        field.key = "rly";
    } else {
        int32_t da = cmd->limit_da > MAX_CURRENT_DA ? MAX_CURRENT_DA : (int32_t)cmd->limit_da;
        channels[i].limit_da = da;
        set_pilot(i);
        snprintf(value, sizeof value, "%ld.%ld", (long)(da / 10), (long)(da % 10));
        field.key = "lim";
    }
    field.value = value;
    send(frame, ep_encode_ack_ok(frame, sizeof frame, cmd->id, &field, 1));
}

/* Take what the Pi sent; called often, also while a measuring window runs, so that an
 * ack never waits for a measurement (the Pi gives up after 0.3 s). */
static void service_serial(void)
{
    ep_command_t cmd;
    while (Serial.available() > 0) {
        ep_rx_event_t event = ep_rx_feed(&rx, (uint8_t)Serial.read(), &cmd);
        if (event == EP_RX_COMMAND || event == EP_RX_REFUSED) {
            execute(event, &cmd);
        }
    }
    apply_relays(millis());
}

/* -- measuring -------------------------------------------------------------------- */

static float adc_volts(uint8_t pin)
{
    return analogReadMilliVolts(pin) / 1000.0f;
}

static int32_t ntc_deci_celsius(uint8_t pin)
{
    float v = adc_volts(pin);
    if (v <= 0.01f || v >= 3.29f) {
        return -2730; /* open or shorted sensor: reads as absurdly cold, the Pi faults */
    }
    float r = 10000.0f * v / (3.3f - v);
    float kelvin = 1.0f / (1.0f / 298.15f + logf(r / 10000.0f) / 3950.0f);
    return (int32_t)lroundf((kelvin - 273.15f) * 10.0f);
}

/* One window of samples: RMS voltage, and per channel RMS current and real power. */
static void measure_window(void)
{
    double sum_v = 0, sum_v2 = 0;
    double sum_i[EP_CHANNELS] = {0}, sum_i2[EP_CHANNELS] = {0}, sum_vi[EP_CHANNELS] = {0};
    uint32_t n = 0;
    uint32_t start = millis();
    while ((uint32_t)(millis() - start) < SAMPLE_WINDOW_MS) {
        float v = adc_volts(VOLTAGE_ADC_PIN);
        sum_v += v;
        sum_v2 += (double)v * v;
        for (int i = 0; i < EP_CHANNELS; i++) {
            float c = adc_volts(CURRENT_ADC_PIN[i]);
            sum_i[i] += c;
            sum_i2[i] += (double)c * c;
            sum_vi[i] += (double)v * c;
        }
        n++;
        if ((n & 31u) == 0) {
            service_serial();
        }
    }
    if (n == 0) {
        return;
    }
    /* Subtracting the means removes the 1.65 V bias of both sensors. */
    double mean_v = sum_v / n;
    double var_v = sum_v2 / n - mean_v * mean_v;
    double v_rms = sqrt(var_v > 0 ? var_v : 0) * VOLTS_PER_ADC_VOLT;
    voltage_dv = (int32_t)lround(v_rms * 10.0);
    for (int i = 0; i < EP_CHANNELS; i++) {
        double mean_i = sum_i[i] / n;
        double var_i = sum_i2[i] / n - mean_i * mean_i;
        double i_rms = sqrt(var_i > 0 ? var_i : 0) * AMPS_PER_ADC_VOLT;
        double p = (sum_vi[i] / n - mean_v * mean_i) * VOLTS_PER_ADC_VOLT * AMPS_PER_ADC_VOLT;
        if (!contact_closed(i)) {
            /* An open contact carries nothing: sensor noise must not run the register. */
            i_rms = 0;
            p = 0;
        }
        channels[i].current_ca = (int32_t)lround(i_rms * 100.0);
        channels[i].power_dw = (int32_t)lround(p * 10.0);
        channels[i].temperature_dc = ntc_deci_celsius(NTC_ADC_PIN[i]);
    }
}

static void nvs_key(int i, char *key, size_t size)
{
    snprintf(key, size, "wh%d", i + 1);
}

/* Energy since the last call, then NVS: a frame never reports a Wh that a power cut
 * could take back. */
static void account_energy(uint32_t elapsed_ms)
{
    for (int i = 0; i < EP_CHANNELS; i++) {
        Channel &ch = channels[i];
        if (ch.power_dw > 0) {
            ch.energy_wh += (ch.power_dw / 10.0) * (elapsed_ms / 3600000.0);
        }
        uint64_t whole = (uint64_t)floor(ch.energy_wh);
        if (whole > ch.stored_wh) {
            char key[8];
            nvs_key(i, key, sizeof key);
            nvs.putULong64(key, whole);
            ch.stored_wh = whole;
        }
    }
}

static void send_frames(void)
{
    char frame[EP_FRAME_BUFFER];
    for (int i = 0; i < EP_CHANNELS; i++) {
        Channel &ch = channels[i];
        ep_field_t extra[5];
        size_t n = 0;
        char rly[2], lim[12];
        extra[n].key = "fw";
        extra[n++].value = EDGEPOINT_FW_VERSION;
        if (first_frame) {
            extra[n].key = "boot";
            extra[n++].value = boot_reason;
        }
        snprintf(rly, sizeof rly, "%d", contact_closed(i) ? 1 : 0);
        extra[n].key = "rly";
        extra[n++].value = rly;
        if (ch.latched) {
            extra[n].key = "trip";
            extra[n++].value = "1";
        }
        if (ch.limit_da >= 0) {
            snprintf(lim, sizeof lim, "%ld.%ld", (long)(ch.limit_da / 10), (long)(ch.limit_da % 10));
            extra[n].key = "lim";
            extra[n++].value = lim;
        }
        ep_telemetry_t t;
        t.seq = seq;
        t.energy_wh = ch.stored_wh;
        t.power_dw = ch.power_dw;
        t.current_ca = ch.current_ca;
        t.voltage_dv = voltage_dv;
        t.temperature_dc = ch.temperature_dc;
        t.channel = (uint8_t)(i + 1);
        t.extra = extra;
        t.n_extra = n;
        int length = ep_encode_telemetry(frame, sizeof frame, &t);
        if (length > 0) {
            send(frame, length);
        }
        /* A frame that could not be encoded still used its number: the Pi sees a gap. */
        seq = ep_next_seq(seq);
    }
    first_frame = false;
}

/* -- setup and loop --------------------------------------------------------------- */

static const char *reset_reason_text(esp_reset_reason_t reason)
{
    switch (reason) {
    case ESP_RST_POWERON:
        return "por";
    case ESP_RST_SW:
        return "sw";
    case ESP_RST_PANIC:
        return "panic";
    case ESP_RST_INT_WDT:
    case ESP_RST_TASK_WDT:
    case ESP_RST_WDT:
        return "wdt";
    case ESP_RST_BROWNOUT:
        return "brownout";
    default:
        return "other";
    }
}

void setup()
{
    /* Relays first, open, before anything else can go wrong. */
    for (int i = 0; i < EP_CHANNELS; i++) {
        digitalWrite(RELAY_PIN[i], LOW);
        pinMode(RELAY_PIN[i], OUTPUT);
        pinMode(SENSE_PIN[i], INPUT_PULLUP);
    }
    boot_reason = reset_reason_text(esp_reset_reason());
    Serial.setTxBufferSize(1024);
    Serial.setRxBufferSize(256);
    Serial.begin(SERIAL_BAUD);
    analogReadResolution(12);
    nvs.begin("edgepoint", false);
    for (int i = 0; i < EP_CHANNELS; i++) {
        char key[8];
        nvs_key(i, key, sizeof key);
        channels[i].stored_wh = nvs.getULong64(key, 0);
        channels[i].energy_wh = (double)channels[i].stored_wh;
        channels[i].limit_da = -1;
        channels[i].latched = false;
        ledcSetup(i, PILOT_PWM_HZ, PILOT_PWM_BITS);
        ledcAttachPin(PILOT_PIN[i], i);
        set_pilot(i);
    }
    ep_rx_init(&rx);
    esp_task_wdt_init(TASK_WDT_S, true);
    esp_task_wdt_add(NULL);
}

void loop()
{
    static uint32_t last_frame_ms = 0;
    esp_task_wdt_reset();
    service_serial();
    uint32_t now = millis();
    if (first_frame || (uint32_t)(now - last_frame_ms) >= FRAME_INTERVAL_MS) {
        uint32_t elapsed = first_frame ? 0 : now - last_frame_ms;
        last_frame_ms = now;
        measure_window();
        account_energy(elapsed);
        send_frames();
    }
    delay(1);
}
