/*
 * board.h - pins and ratings of the edgepoint metering board (hardware/WIRING.md).
 * One channel per connector; set EP_CHANNELS and the per-channel arrays together.
 */
#ifndef EDGEPOINT_BOARD_H
#define EDGEPOINT_BOARD_H

#include <stdint.h>

#define EP_CHANNELS 1

/* Per channel, index 0 is channel 1. */
/* The firmware's relay, in series with the Pi's: drives the contactor coil's second
 * switch. Active high; the driver has a pull-down, so the relay is open while the
 * ESP32 boots, resets or is unpowered. */
static const uint8_t RELAY_PIN[EP_CHANNELS] = {26};
/* The contactor's auxiliary contact (closed = contactor closed), to GND, pulled up. */
static const uint8_t SENSE_PIN[EP_CHANNELS] = {27};
/* Current transformer (SCT-013, burden + 1.65 V bias) on an ADC1 pin. */
static const uint8_t CURRENT_ADC_PIN[EP_CHANNELS] = {34};
/* NTC 10 k (B 3950) near the contactor, from 3V3 through a 10 k resistor. */
static const uint8_t NTC_ADC_PIN[EP_CHANNELS] = {32};
/* Control pilot PWM (1 kHz) of the EVSE, through the +-12 V pilot driver. */
static const uint8_t PILOT_PIN[EP_CHANNELS] = {25};

/* Mains voltage through a ZMPT101B transformer module, biased at 1.65 V; shared. */
#define VOLTAGE_ADC_PIN 35

/* Calibration: ADC volts (peak, bias removed) -> line volts / amps. */
#define VOLTS_PER_ADC_VOLT 690.0f
#define AMPS_PER_ADC_VOLT 30.3f

/* The contactor and cable rating: a current limit from the Pi is clamped to it. */
#define MAX_CURRENT_DA 320 /* 32.0 A */

#define SERIAL_BAUD 115200
#define FRAME_INTERVAL_MS 1000u
#define SAMPLE_WINDOW_MS 200u /* 10 mains cycles at 50 Hz, 12 at 60 Hz */

#endif /* EDGEPOINT_BOARD_H */
