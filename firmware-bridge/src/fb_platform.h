/* Internal: where constant tables live. On AVR, const data is copied into RAM at start-up unless
 * it is marked PROGMEM and read with the pgm_read_* instructions; elsewhere flash is addressable
 * and these are plain reads. */
#ifndef FB_PLATFORM_H
#define FB_PLATFORM_H

#include <stdint.h>

#if defined(__AVR__)
#include <avr/pgmspace.h>
#define FB_FLASH PROGMEM
#define fb_flash_byte(p) ((uint8_t)pgm_read_byte(p))
#define fb_flash_word(p) ((uint16_t)pgm_read_word(p))
#else
#define FB_FLASH
#define fb_flash_byte(p) (*(const uint8_t *)(p))
#define fb_flash_word(p) (*(const uint16_t *)(p))
#endif

struct fb_mp_writer;
/* Append n bytes that live in flash (FB_FLASH) to a msgpack writer. */
void fb_mp_write_flash(struct fb_mp_writer *w, const uint8_t *flash, uint8_t n);

#endif
